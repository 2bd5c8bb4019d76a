namespace ReaLNative.Engine.Tests;
