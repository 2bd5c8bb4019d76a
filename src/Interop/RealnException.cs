// The one way a native failure reaches managed code: a status code plus the native detail
// message of the failing thread, as ONNX Runtime's NativeApiStatus does.
namespace ReaLNative.Interop;

/// <summary>realn_status values.</summary>
public enum RealnStatus
{
    Ok = 0,
    InvalidArgument = -1,
    OutOfMemory = -2,
    Unsupported = -3,
    BackendError = -4,
    NotFound = -5,
    Internal = -6,
    Numeric = -7,
}

/// <summary>A librealn call failed; <see cref="Exception.Message"/> carries the native detail.</summary>
public sealed class RealnException : Exception
{
    public RealnException(RealnStatus status, string nativeMessage)
        : base($"{StatusText(status)}: {nativeMessage}")
    {
        Status = status;
        NativeMessage = nativeMessage;
    }

    public RealnStatus Status { get; }

    /// <summary>The text of realn_last_error() at the time of the failure.</summary>
    public string NativeMessage { get; }

    internal static RealnException FromStatus(int status) => new((RealnStatus)status, Native.LastError());

    private static string StatusText(RealnStatus s) => s switch
    {
        RealnStatus.InvalidArgument => "invalid argument",
        RealnStatus.OutOfMemory => "out of memory",
        RealnStatus.Unsupported => "unsupported",
        RealnStatus.BackendError => "backend error",
        RealnStatus.NotFound => "not found",
        RealnStatus.Internal => "internal error",
        RealnStatus.Numeric => "numeric error",
        _ => $"status {(int)s}",
    };
}
