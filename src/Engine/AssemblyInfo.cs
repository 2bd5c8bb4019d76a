namespace ReaLNative.Engine;
