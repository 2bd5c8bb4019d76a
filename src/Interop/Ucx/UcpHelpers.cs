// Hand-written companions of the generated UCP bindings: the library names, the static inline
// ucp_init (a wrapper of ucp_init_version with the header's API version), and the status-pointer
// macros (UCS_PTR_IS_ERR / UCS_PTR_STATUS) that C code uses on the *_nbx return values.
namespace ReaLNative.Interop.Ucx;

public static unsafe partial class Ucp
{
    private const string Lib = "ucp";
    private const string Ucs = "ucs";

    /// <summary>UCP_API_MAJOR / UCP_API_MINOR of the headers the bindings were generated from.</summary>
    public const uint ApiMajor = 1, ApiMinor = 13;

    public static ucs_status_t ucp_init(ucp_params* p, nint config, nint* context) =>
        ucp_init_version(ApiMajor, ApiMinor, p, config, context);

    /// <summary>UCS_PTR_IS_ERR: a status encoded in a request pointer.</summary>
    public static bool IsError(void* ptr) => (nuint)ptr >= unchecked((nuint)(nint)ucs_status_t.UCS_ERR_LAST);

    /// <summary>UCS_PTR_STATUS.</summary>
    public static ucs_status_t Status(void* ptr) => (ucs_status_t)(int)(nint)ptr;

    /// <summary>The UCX text for a status.</summary>
    public static string StatusText(ucs_status_t s) =>
        System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)ucs_status_string(s)) ?? s.ToString();
}
