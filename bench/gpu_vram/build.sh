#!/bin/bash
# Call 1 on the GPU machine: unpack the stripped llama.cpp source, configure and build llama-server with CUDA.
set -u
R=$PWD; W=$R/.gpuw; mkdir -p $W; cd $W
echo "== $(date -u +%T) start"; nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv; nvcc --version | tail -1; cmake --version | head -1; nproc
cp $R/.gpu1/model.partA $W/model.partA
[ -d $W/lsmall ] || python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" $R/.gpu1/src.tar.xz $W; ls $W
EXTRA=()
CU=$(dirname $(dirname $(readlink -f $(which nvcc))))
echo "nvcc root: $CU"
if ! ls $CU/include/cublas_v2.h /usr/local/cuda/include/cublas_v2.h 2>/dev/null | grep -q .; then
  H=$(find /usr /opt -name cublas_v2.h 2>/dev/null | head -1); echo "cublas_v2.h at: $H"
  L=$(find /usr /opt -name 'libcublas.so*' 2>/dev/null | grep -v Lt | head -1); LT=$(find /usr /opt -name 'libcublasLt.so*' 2>/dev/null | head -1)
  echo "libcublas: $L $LT"
  if [ -n "$H" ] && [ -n "$L" ]; then
    EXTRA=(-DCUDA_cublas_LIBRARY=$L -DCUDA_cublasLt_LIBRARY=$LT "-DCMAKE_CUDA_FLAGS=-I$(dirname $H)" "-DCMAKE_CXX_FLAGS=-I$(dirname $H)")
    export LD_LIBRARY_PATH=$(dirname $L):${LD_LIBRARY_PATH:-}; echo "export LD_LIBRARY_PATH=$(dirname $L)" > $W/env.sh
  fi
fi
if [ ! -f $W/build/build.ninja ]; then
  cmake -S $W/lsmall -B $W/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF "${EXTRA[@]}" > $W/configure.log 2>&1
  echo "configure rc=$?"; grep -i -E "cuda|cublas|error" $W/configure.log | head -20
fi
nvcc -O2 -o $W/ctxprobe $R/.gpu1/ctxprobe.cu && echo "ctxprobe built"
echo "== $(date -u +%T) build"
timeout ${BUILD_S:-450} cmake --build $W/build --target llama-server -j16 > $W/build.log 2>&1; echo "build rc=$?"
grep -E "FAILED|error" $W/build.log | head -20; tail -3 $W/build.log
ls -la $W/build/bin/ 2>/dev/null
cp $W/configure.log $W/build.log ${OUT:-/tmp}/ 2>/dev/null
echo "== $(date -u +%T) end"
