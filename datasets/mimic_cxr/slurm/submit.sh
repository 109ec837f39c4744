#!/bin/bash
# Submit the MIMIC-CXR-JPG pipeline as one chain: manifest -> cache (array) -> fit (2 nodes) -> eval.
# Run from the repository root: bash datasets/mimic_cxr/slurm/submit.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
S=datasets/mimic_cxr/slurm
source $S/env.sh
mkdir -p logs                                        # the scripts write logs/<job>-<id>.out
m=$(sbatch --parsable --chdir="$PWD" $S/1_manifest.sbatch)
c=$(sbatch --parsable --chdir="$PWD" --dependency=afterok:$m $S/2_cache.sbatch)
f=$(sbatch --parsable --chdir="$PWD" --dependency=afterok:$c $S/3_fit.sbatch)
e=$(sbatch --parsable --chdir="$PWD" --dependency=afterok:$f $S/4_eval.sbatch)
echo "submitted: manifest $m, cache $c (array), fit $f, eval $e; follow with: tail -f logs/mimic-fit-$f.out"
