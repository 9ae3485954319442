# Sourced, not run, by the scripts that train, calibrate and score the shipped categories
# (reproduce_results.sh, readapt.sh): one place for each category's data, its rows and its licence, so
# that a re-adaptation is validated on exactly the rows the shipped file was, and the script that runs
# `landmarks` the same way (print the command, run it unless --dry-run).
#
# Rows, for every category (RESULTS.md's protocol; nothing is chosen on the test rows):
#   faces  trains on MTFL training rows :6655, validates on 6655: (the regressor fitted on :6655),
#          is tested on AFLW_M (MTFL's test list) with the regressor on all of MTFL's training rows
#   cats, shoes  train on their folder's rows :-1000, validate on -1000:-500, are tested on -500:
# The int8 calibration reads the training rows and is checked on the validation rows.
#
# DATA (default ../shared/data), LANDMARKS (default .venv/bin/landmarks) and PYTHON (default
# .venv/bin/python) override the paths. A script sets dry=1 for --dry-run.
D=${DATA:-../shared/data}
M=$D/mtfl
landmarks=${LANDMARKS:-.venv/bin/landmarks}
python=${PYTHON:-.venv/bin/python}
dry=0

run() {  # print a command (quoted as a shell would read it), then run it unless --dry-run
  printf '+'; printf ' %q' "$@"; echo
  [[ $dry == 1 ]] || "$@"
}

keep() {  # copy an output file to where the pages read it (only when the commands ran)
  echo "+ cp $1 $2"
  [[ $dry == 1 ]] || cp "$1" "$2"
}

usage() {  # the calling script's header comment, as its --help
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# `landmarks adapt` options: the images a category trains on and the rows it is validated on
training_data() {
  case $1 in
    faces) echo "mtfl:$M/new_training.txt --train-split :6655 --val mtfl:$M/new_training.txt --val-split 6655: --val-fit-split :6655" ;;
    cats|shoes) echo "folder:$D/$1 --train-split=:-1000 --val folder:$D/$1 --val-split=-1000:-500" ;;
  esac
}

# `landmarks calibrate` options: calibrated on the training rows, checked against fp32 on the validation rows
calibration_data() {
  case $1 in
    faces) echo "--images mtfl:$M/new_training.txt --split :6655 --held-out 6655:" ;;
    cats|shoes) echo "--images folder:$D/$1 --split=:-1000 --held-out=-1000:-500" ;;
  esac
}

# `landmarks evaluate` options: the validation rows (choosing) and the test rows (reporting, once)
validation_data() {
  case $1 in
    faces) echo "--train mtfl:$M/new_training.txt --train-split :6655 --test mtfl:$M/new_training.txt --test-split 6655:" ;;
    cats|shoes) echo "--images folder:$D/$1 --test-split=-1000:-500" ;;
  esac
}
test_data() {
  case $1 in
    faces) echo "--train mtfl:$M/new_training.txt --test mtfl:$M/new_testing.txt" ;;
    cats|shoes) echo "--images folder:$D/$1 --test-split=-500:" ;;
  esac
}

licence() {  # the notice an adapter trained on the category's dataset ships with
  case $1 in
    faces) echo "Trained on MTFL images (research use only; Zhang et al. 2014)" ;;
    cats) echo "Trained on AFHQ cats (CC BY-NC 4.0; Choi et al. 2020)" ;;
    shoes) echo "Trained on UT-Zappos50K images (research use only; Yu & Grauman 2014)" ;;
  esac
}

summary() {  # one line per evaluation file
  [[ $dry == 1 ]] && return
  "$python" - "$1" <<'PY'
import json, sys
path = sys.argv[1]
d = json.load(open(path))
if "mean_pck@0.2" in d:
    print(f"{path}: PCK@0.2 {d['mean_pck@0.2']:.2f}% on {d['images']} images")
else:
    fb = f"forward {d['forward']:6.2f}  backward {d['backward']:6.2f}  " if "forward" in d else ""
    bg = f"  background {d['background_points_per_image']:.2f}" if "background_points_per_image" in d else ""
    print(f"{path}: {fb}consistency {d['consistency']:5.2f} px  spread {d['spread']:.1f}{bg}")
PY
}
