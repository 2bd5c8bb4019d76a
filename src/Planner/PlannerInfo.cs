namespace ReaLNative.Planner;

/// <summary>Marker for the planner assembly (pure C#, no native code).</summary>
public static class PlannerInfo
{
    public const int PlanFormatVersion = 1;
}
