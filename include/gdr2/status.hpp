// gdr2 — status codes and the throwing wrapper.
//
// Every library entry point returns a Status instead of aborting or throwing: a
// call either does all of its work or, when the arguments are wrong, touches no
// output buffer and says what it expected. `gdr2::check(status)` turns a failed
// status into a `gdr2::Error` exception for callers who prefer exceptions.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace gdr2 {

/// What went wrong, coarsely; the message says exactly what.
enum class Code {
  ok = 0,
  invalid_argument,  ///< shapes, strides, head counts, cu_seqlens, options
  non_finite,        ///< NaN or Inf found in an input while `check_finite` was set
  unsupported,       ///< a valid request this engine does not implement (e.g. chunk size)
  device_error,      ///< a CUDA runtime / cuBLAS call failed (CUDA backend only)
  internal_error,    ///< a self-check of the library's kernels failed: a bug to report
};

inline const char* to_string(Code c) {
  switch (c) {
    case Code::ok: return "ok";
    case Code::invalid_argument: return "invalid argument";
    case Code::non_finite: return "non-finite input";
    case Code::unsupported: return "unsupported";
    case Code::device_error: return "device error";
    case Code::internal_error: return "internal error";
  }
  return "unknown";
}

/// Result of a library call: `ok()` or a code with a human-readable message.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status success() { return {}; }
  bool ok() const { return code_ == Code::ok; }
  explicit operator bool() const { return ok(); }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "invalid argument: q has shape ... expected ..."
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(gdr2::to_string(code_)) + ": " + message_;
  }

 private:
  Code code_ = Code::ok;
  std::string message_;
};

/// Exception carrying a failed Status (thrown only by `check`).
class Error : public std::runtime_error {
 public:
  explicit Error(Status s) : std::runtime_error(s.to_string()), status_(std::move(s)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

/// Throw `gdr2::Error` if `s` is not ok; the library itself never calls this.
inline void check(const Status& s) {
  if (!s.ok()) throw Error(s);
}

}  // namespace gdr2

/// Return early from the enclosing function if `expr` yields a failed Status.
#define GDR2_RETURN_IF_ERROR(expr)              \
  do {                                          \
    ::gdr2::Status gdr2_status_ = (expr);       \
    if (!gdr2_status_.ok()) return gdr2_status_; \
  } while (0)
