#!/usr/bin/env bash
# The whole GPU check in one go, within 10 minutes, on a GPU machine that has torch (CUDA) and maybe
# transformers but neither diffusers nor Ray, and reaches no network. From the repository root:
#
#   benchmarks/gpu_check.sh --download   # where a package registry answers: the wheels, into .gpu-check/wheels
#   benchmarks/gpu_check.sh              # on the GPU machine, with .gpu-check/ beside the checkout
#
# It installs only what the machine lacks (or has too old) from .gpu-check/wheels, with --no-deps, into
# .gpu-check/site (put first on PYTHONPATH for these runs only; the machine's environment is left alone),
# then runs benchmarks/cogvideox_gpu.py (real-size CogVideoX-5B, 49x480x720, bf16): eager; compiled; SP 2
# on 2 GPUs; SP 2 x CFG 2 on 4; each in its own time limit, skipped when the 10 minutes would not hold
# it. Results: one JSON line each on stdout and in .gpu-check/results.jsonl.
#
# The wheels are this checkout's pinned versions (raypipe's venv): pure-Python ones for any Python 3;
# the compiled ones (pydantic-core, PyYAML, regex, Pillow, charset-normalizer) for the Python and platform
# --download runs on (cp311 x86_64 here), safetensors and hf-xet abi3. A machine on another Python must
# have those itself (the check says which it lacks). Size: BENCHMARKS.md ("GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.gpu-check
WHEELS=$DIR/wheels
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-600}

# dist==version import-name minimum: what cogvideox_gpu.py imports (diffusers and what it needs; for
# --sp: raypipe.config's pydantic / PyYAML / fsspec and yunchang), at the versions raypipe runs with.
REQUIREMENTS="
diffusers==0.42.1 diffusers 0.42.1
huggingface_hub==2.4.0 huggingface_hub 1.32.0
safetensors==0.8.0 safetensors 0.8.0
importlib_metadata==10.2.0 importlib_metadata 0
zipp==4.1.2 zipp 0
filelock==4.3.1 filelock 3.10.0
fsspec==2026.9.0 fsspec 2023.5.0
tqdm==4.70.1 tqdm 4.42.1
click==8.5.1 click 8.4.2
packaging==26.4 packaging 20.9
typing_extensions==4.16.0 typing_extensions 4.16.0
httpx2==2.16.2 httpx2 2.0.0
httpcore2==2.16.2 httpcore2 2.16.2
h11==0.16.0 h11 0.16
anyio==4.16.0 anyio 4.10
idna==3.20 idna 3.18
truststore==0.10.5 truststore 0.10
hf_xet==1.8.0 hf_xet 1.6.0
requests==2.34.2 requests 2.0
urllib3==2.8.0 urllib3 1.26
certifi==2026.10.19.post1 certifi 2023.5.7
charset_normalizer==3.5.3 charset_normalizer 2.0
regex==2026.11.19 regex 2020.1.1
pillow==13.0.0 PIL 8.0
yunchang==0.6.4 yunchang 0.6.0
pydantic==2.14.4 pydantic 2.7
pydantic_core==2.50.5 pydantic_core 0
annotated_types==0.8.0 annotated_types 0.6.0
typing_inspection==0.4.5 typing_inspection 0.4.4
pyyaml==6.0.4 yaml 5.1
"

# xDiT (xfuser) and what it needs beyond the above: 38 MiB more (av alone 34), 62.6 MiB in all. Optional:
# `--download --with-xfuser`; without it the SP runs use raypipe's own Ulysses attention over NCCL.
XFUSER_REQUIREMENTS="
xfuser==0.7.0 xfuser 0.7.0
av==18.1.0 av 0
sentencepiece==0.2.3 sentencepiece 0
distvae==0.1.0 distvae 0
beautifulsoup4==4.15.0 bs4 0
soupsieve==4.1.3 soupsieve 0
einops==0.8.2 einops 0
peft==0.21.2 peft 0
accelerate==1.15.0 accelerate 0
"

if [[ "${1:-}" == "--download" ]]; then
  mkdir -p "$WHEELS"
  WANTED=$REQUIREMENTS
  if [[ "${2:-}" == "--with-xfuser" ]]; then WANTED="$REQUIREMENTS$XFUSER_REQUIREMENTS"; fi
  # shellcheck disable=SC2046
  $PY -m pip download --no-deps --only-binary=:all: -d "$WHEELS" $(echo "$WANTED" | awk 'NF {print $1}')
  du -sh "$WHEELS"
  exit 0
fi
if compgen -G "$WHEELS/xfuser-*.whl" > /dev/null; then REQUIREMENTS="$REQUIREMENTS$XFUSER_REQUIREMENTS"; fi

mkdir -p "$DIR/site"
: > "$DIR/results.jsonl"
# What this Python lacks: a distribution missing, or older than the minimum (or diffusers not 0.42.x).
MISSING=$(REQUIREMENTS="$REQUIREMENTS" $PY - <<'EOF'
import importlib.metadata as md, os, re
def version(text):
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])
for line in os.environ["REQUIREMENTS"].split("\n"):
    if not line.strip():
        continue
    pinned, module, minimum = line.split()
    dist = pinned.split("==")[0]
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        print(pinned)
        continue
    if version(have) < version(minimum) or (dist == "diffusers" and not have.startswith("0.42.")):
        print(pinned)
        if dist == "pydantic":  # pydantic pins its core exactly: they come as a pair
            print("pydantic_core==2.50.5")
EOF
)
if [[ -n "$MISSING" ]]; then
  echo "gpu_check: installing into $DIR/site: $(echo $MISSING)"
  # shellcheck disable=SC2086
  $PY -m pip install --quiet --no-deps --no-index --find-links "$WHEELS" --target "$DIR/site" $(echo "$MISSING" | sort -u)
fi
export PYTHONPATH="$PWD/$DIR/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, diffusers; print('gpu_check: torch', torch.__version__, 'cuda', torch.version.cuda,
'diffusers', diffusers.__version__, 'GPUs', torch.cuda.device_count(),
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")

run() {  # run LIMIT_S ARGS...: one benchmark, if the budget still holds it
  local limit=$1; shift
  if (( SECONDS + limit > BUDGET_S )); then
    echo "gpu_check: skipped (budget): cogvideox_gpu.py $*"
    return 0
  fi
  echo "gpu_check: cogvideox_gpu.py $* (limit ${limit}s)"
  if timeout "$limit" $PY benchmarks/cogvideox_gpu.py "$@" > "$DIR/last.out"; then
    tail -n 1 "$DIR/last.out" | tee -a "$DIR/results.jsonl"
  else
    echo "gpu_check: FAILED or timed out: cogvideox_gpu.py $*" | tee -a "$DIR/results.jsonl"
  fi
}

run 150 --steps 5 --warmup 2
run 240 --steps 5 --warmup 2 --compile
if (( GPUS >= 2 )); then run 150 --steps 5 --warmup 2 --sp 2; fi
if (( GPUS >= 4 )); then run 150 --steps 5 --warmup 2 --sp 2 --cfg-parallel; fi
echo "gpu_check: done in ${SECONDS}s; results in $DIR/results.jsonl"
