# Paths shared by the MIMIC-CXR-JPG SLURM scripts: edit once, then `bash datasets/mimic_cxr/slurm/submit.sh`.
export MIMIC=/data/physionet/mimic-cxr-jpg/2.1.0     # the folder as published (files/, *.csv.gz, report .txt)
export EXPORT=/data/pacs_export                      # 0_index_dicom only: a DICOM export folder
export WORK=/scratch/$USER/mimic                     # manifest, cache and runs (shared by every node)
export MEDCLIP_SALT_FILE=$HOME/.medclip_salt          # one secret salt per site: keep it, never share it
export MEDCLIP_SALT=$(cat "$MEDCLIP_SALT_FILE")
mkdir -p "$WORK"
