// C++ exceptions caught at the C interface of the shims (cuda_graph.cpp, autograd.cpp): an entry
// point returns 0, or 1 with the exception's message in the caller's buffer.
#pragma once

#include <cstddef>
#include <cstring>
#include <exception>

namespace {

void set_error(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

template <class F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, e.what());
  } catch (...) {
    set_error(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace
