#!/bin/bash
# Call 2 on the GPU machine: finish the build if call 1 ran out of time, join the model, measure.
set -u
R=$PWD; W=$R/.gpuw; export PYTHONUNBUFFERED=1
echo "== $(date -u +%T) start"; ls $W 2>&1 | head; [ -f $W/env.sh ] && . $W/env.sh
if [ ! -x $W/build/bin/llama-server ]; then
  echo "llama-server missing: continuing the build"
  timeout ${BUILD_S:-240} cmake --build $W/build --target llama-server -j16 > $W/build2.log 2>&1; echo "build rc=$?"; tail -3 $W/build2.log
  cp $W/build2.log $OUT/ 2>/dev/null
fi
P=$(ls $R/.gpu1/model.partA $W/build/data/model.partA 2>/dev/null | head -1); [ -z "$P" ] && P=$(find / -xdev -name model.partA 2>/dev/null | head -1); echo "partA: $P"
ls -la $R/.gpu1 $W $W/build/data 2>&1 | head -30; [ -n "$P" ] || { echo "no partA"; exit 3; }
mkdir -p $W/build/data; [ -x $W/build/data/ctxprobe ] || nvcc -O2 -o $W/build/data/ctxprobe $R/.gpu1/ctxprobe.cu 2>/dev/null || nvcc -O2 -o $W/build/data/ctxprobe $R/.gpu2/ctxprobe.cu
cat $P $R/.gpu2/model.partB > $W/build/data/model.gguf
echo "sha256 $(sha256sum $W/build/data/model.gguf | cut -c1-64) (want b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53)"
$W/build/bin/llama-server --version 2>&1 | tail -2
timeout ${MEASURE_S:-200} python3 $R/.gpu2/measure.py --server $W/build/bin/llama-server --model $W/build/data/model.gguf \
  --out $OUT --work $W/mw --ctxprobe $W/build/data/ctxprobe 2>&1 | tee $OUT/log
nvidia-smi
echo "== $(date -u +%T) end"
