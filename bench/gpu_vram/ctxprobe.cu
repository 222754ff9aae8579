// Bare CUDA context: how much device memory one process holds before it allocates anything.
#include <cuda_runtime.h>
#include <cstdio>
#include <unistd.h>
int main() {
    cudaFree(0);
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    printf("ctxprobe free=%zu total=%zu\n", f, t);
    fflush(stdout);
    sleep(4);
    return 0;
}
