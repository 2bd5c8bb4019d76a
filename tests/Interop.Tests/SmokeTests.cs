namespace ReaLNative.Interop.Tests;
