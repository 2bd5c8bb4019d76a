namespace ReaLNative.Planner.Tests;
