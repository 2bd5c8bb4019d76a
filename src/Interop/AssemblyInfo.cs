namespace ReaLNative.Interop;
