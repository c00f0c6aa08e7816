# defacegan: the three commands a newcomer needs are `make install`, `make test`, `make train`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
DEMO   ?= data/demo
IXI    ?= data/ixi
IXI_SOURCE ?= ../shared/data/ixi-t1-2mm

.PHONY: install test test-all train demo weights candidate figures audit audit-native assets bench clean

# caideface is installed for its face mask and MNI152 template only (bench/other_defacers.py): its own
# steps need HD-BET's weights and 3D Slicer, and it pins numpy<2, so it comes without its dependencies;
# deepdefacer for its saved network only (it needs Keras 2; bench/deepdefacer.py runs it with PyTorch).
install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps caideface==0.4.0 deepdefacer==2.1.2
	@if [ ! -f /usr/share/mricron/templates/ch2.nii.gz ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's mricron-data (Colin27 head)"; \
		(apt-get update -qq && apt-get install -y -qq mricron-data) || echo "warning: mricron-data not installed; demo uses pydeface's head only"; \
	fi
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium (headless browser for the web page test)"; \
		(apt-get update -qq && apt-get install -y -qq chromium) || echo "warning: chromium not installed; the browser test is skipped"; \
	fi

# One test file per worker process (its module fixtures are built once), as many workers as cores (up to 4).
XDIST  := -n auto --maxprocesses 4 --dist loadfile

test:
	$(PY) -m pytest -q $(XDIST)

test-all:
	$(PY) -m pytest -q $(XDIST) -m ''

demo:
	test -f $(DEMO)/manifest.csv || $(VENV)/bin/defacegan data build --source demo --out $(DEMO)

train: demo
	$(PY) train.py data.root=$(DEMO)

# The three-way detector shipped in the package (src/defacegan/assets/detector.pt): an ensemble of
# detectors, one per seed, each trained on every defacing family drawn on the IXI subset less its
# held-out subjects (defacegan.detector_training; 16-17 min a member with its draws cached). A member is trained again only when
# the generator, the label rule, the drawing (pose, grid, views) or the training code changed since it was made.
WEIGHT_SEEDS ?= 0 1 2
# Drawn (in every member's manifest, and in every figure) but not trained on: with it, seed 0's member
# called Colin27's intact face `replaced` (p(face) 0.31; without: `face`, 0.71) and blurred faces
# and eyes-kept partial cuts not a face more often (docs/detector.md, "Why `replace_smooth` is drawn but not trained on"); shown blurred faces 3 times
# as often, it gave blurred faces back but not the eye-level cuts that keep the eyes; with a quarter of its fills
# keeping the eyes (labelled face), it lost fewer of those cuts but learned the fills less well (bench/smooth_training.py).
WEIGHT_WITHOUT ?= replace_smooth
# Rounds of draws a member trains on, member N on seeds N to N+3: one network of four rounds beat one of
# two on every k-fold row (docs/detector.md, "Four rounds of draws a network").
WEIGHT_ROUNDS ?= 4
# Each volume divided by its tissue's local mean at this σ (mm) before the views (the contract's flatten_mm), so that
# a receive coil's field divides out: built as a candidate beside the unflattened ensemble, it kept more real faces
# under a field and lost none without (docs/detector.md, "Flattening the field out of the views"); empty: not
# flattened. `make candidate WEIGHT_FLATTEN_MM=...` builds another recipe's ensemble beside the shipped one, for the
# benches' --candidate/--ckpt.
WEIGHT_FLATTEN_MM ?= 20
MEMBER_DIR := data/members-rounds$(WEIGHT_ROUNDS)$(if $(WEIGHT_FLATTEN_MM),-flatten$(WEIGHT_FLATTEN_MM))
MEMBERS := $(WEIGHT_SEEDS:%=$(MEMBER_DIR)/seed-%.pt)
CANDIDATE := data/detector$(if $(WEIGHT_FLATTEN_MM),-flatten$(WEIGHT_FLATTEN_MM)).pt

weights: $(MEMBERS)
	$(PY) -m defacegan.detector_training --ensemble $(MEMBERS) --out src/defacegan/assets/detector.pt

candidate: $(MEMBERS)
	$(PY) -m defacegan.detector_training --ensemble $(MEMBERS) --out $(CANDIDATE)

$(MEMBER_DIR)/seed-%.pt: src/defacegan/families.py src/defacegan/features.py src/defacegan/detector_data.py src/defacegan/detector_training.py \
                        src/defacegan/augment.py src/defacegan/contract.py src/defacegan/views.py
	$(PY) -m defacegan.detector_training --source $(IXI_SOURCE) --seed $* --rounds $(WEIGHT_ROUNDS) --out $@ \
		--manifest $(MEMBER_DIR)/seed-$*.tsv --without $(WEIGHT_WITHOUT) $(if $(WEIGHT_FLATTEN_MM),--flatten-mm $(WEIGHT_FLATTEN_MM))

# The detector's figures in the README: the shipped detector on held-out heads, k-fold, calibration,
# the partial-removal sweep, leave-one-family-out (64 min at its last run, 8 of them drawing the views make weights had not cached);
# the same k-fold with three networks a fold, the recipe shipped until 02e70a9 (89 min at its last run, 77 of them fitting; the rest drew the held-out heads' views of seeds 1 and 2);
# the same k-fold with one network a fold trained on four rounds of draws instead of two (54 min), and bench/kfold_compare.py reading it beside both (seconds);
# those three on views not flattened (--flatten-mm 0: the recipe before ff29075, whose rows the README keeps); then the four-round k-fold on the
# shipped detector's own views, flattened at σ 20 mm, with its leave-one-family-out fits (62 min at its last run: 51 for the k-fold, 7.5 of them
# drawing the held-out heads' flattened rounds, 11 for the fits), read beside the unflattened one; the leave-one-family-out fits again on
# four draws per family and round instead of one, on copies of both reports (46 min each; docs/detector.md, "With four times the draws");
# and the shipped recipe itself, three such networks a fold on the flattened views (no leave-one-family-out; 114 min at its last run,
# 104 of them fitting, the rest drawing the held-out heads' rounds of seeds 4 and 5), read beside its first network alone (the four-round k-fold's own);
# then the shipped detector on the heads from outside IXI (bench/outside_heads.py, ~4 min) and on
# held-out IXI heads whose field of view stops above the neck, below the top of the head or behind the nose (bench/field_of_view.py,
# a few minutes), as other scanners would acquire them: thick slices, noise, bias, smoothing, ghosts, motion, tilts (bench/acquisition.py,
# ~15 min; its bias fields again on the 24 training heads, where check's second look can be judged without the held-out ones, ~9 min), and on
# held-out heads defaced by other projects' tools, Quickshear, caideface and deepdefacer (bench/other_defacers.py, 5 min);
# the pose guard on the shipped column's draws, with it and without (bench/pose_guard.py, ~6 min);
# and the anatomy's second opinion against the network alone on every family (bench/anatomy.py, ~38 min), and on fresh partial and eye-level draws alone (15 min);
# and on all 32 heads, each judged by the flattened one-network k-fold's network that never saw it (its fits kept by --fits; 31 min), and on their fresh partial and eye-level draws (~15 min);
# how the anatomy's reading of each feature region agrees with the label rule on those k-fold runs and the held-out partial one, and what a
# head grown 2 or 4 mm or a lower variation line for the tissue test would turn in check (bench/reading.py, 10, 5 and 5 min);
# the partial-removal sweep (from below, from the front, the nose alone) through check and the network alone (bench/sweep_check.py, ~5 min), and on Colin27 (1 min);
# and held-out heads re-faced by a Pix2Pix that train.py trains on the others (bench/gan_refaced.py, ~5 min);
# held-out heads whose face is replaced by faces the detector never trained on: Colin27's, the training heads' average, the other held-out heads' average, another held-out head's (bench/other_faces.py, 7 min), and by each of the shipped ensemble's members alone (--member, 6 min each);
# the defacer on moved and posed heads (bench/deface.py, ~30 min) and its registration's pitch search (bench/pitch_search.py, 3 min);
# whether more heads, more draws of the same heads, a wider network or leaving out the cuts near the rule's line would help the network (bench/learning_curve.py, ~110 min, 43 more to draw the first time);
# whether training on replace_smooth, with blurred faces shown more often, would (bench/smooth_training.py, ~17 min on learning_curve's draws);
# whether face swaps between the training heads, added to training, teach it those (bench/swap_training.py, ~20 min on smooth_training's draws),
# and its two fits through check's default on real faces and on every family (bench/anatomy.py --ckpt, ~50 min);
# whether the average of the other training heads' faces does instead (bench/swap_training.py --donors average, ~27 min),
# and its second fit through check's default (the first is the face swaps' own; ~20 min);
# and the same pair of fits on the shipped detector's flattened views (--flatten-mm 20, 22 min), since the shipped ensemble lost the average faces;
# whether drawing the training heads under a receive coil's field makes it hold under one (bench/bias_training.py: round 0 drawn
# under the field, ~25 min, and a fit, ~12 min; the plain fit again unless data/bias_training holds it; then the held-out draws under two fields),
# and again with every draw under a milder field (~40 min; the plain fit copied from the first run's), and on a contract that
# divides each volume by its tissue's local mean before the views (--flatten-mm, ~60 min: its own draws, held-out ones too),
# and that pair again for seed 1's member (~60 min: round 0 of seed 1 drawn on both contracts, both fitted; the same test draws);
# then the shipped ensemble (since ff29075 the recipe on the flattening contract, which `make weights` builds) beside the unflattened one it
# replaced (02e70a9's checkpoint, from git), network alone under fields and check's path under them (~10 min with the draws cached, ~25 without);
# and check's default on the face-labelled families' held-out draws under those two fields and without one (bench/anatomy.py --bias-field, 15, 24 and 8 min);
# whether a registration tells a blurred face from a smooth fill where no feature region holds tissue, what a converse rule would need
# (bench/blur_or_fill.py: its lines looked at on the 24 training heads, then checked on the 8 held-out ones; 35 and 47 min run side by side);
# last, all of their trust figures in one table beside the detector's targets (bench/trust.py, which only reads them).
figures:
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --flatten-mm 0
	cp bench/results/detector_eval/reliability.png docs/detector_reliability.png
	cp bench/results/detector_eval/sweep.png docs/detector_sweep.png
	rm -rf bench/results/detector_eval-lofo4 && cp -r bench/results/detector_eval bench/results/detector_eval-lofo4
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --flatten-mm 0 --lofo-only --lofo-draws 4 --out bench/results/detector_eval-lofo4
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --flatten-mm 0 --members 3 --no-lofo --out bench/results/detector_eval-members3
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --flatten-mm 0 --train-rounds 4 --no-lofo --out bench/results/detector_eval-rounds4
	$(PY) bench/kfold_compare.py bench/results/detector_eval bench/results/detector_eval-rounds4
	$(PY) bench/kfold_compare.py bench/results/detector_eval-members3 bench/results/detector_eval-rounds4
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --train-rounds 4 --fits data/kfold-rounds4-flatten20 --out bench/results/detector_eval-rounds4-flatten20
	$(PY) bench/kfold_compare.py bench/results/detector_eval-rounds4 bench/results/detector_eval-rounds4-flatten20 --names "not flattened" "flattened"
	rm -rf bench/results/detector_eval-rounds4-flatten20-lofo4 && cp -r bench/results/detector_eval-rounds4-flatten20 bench/results/detector_eval-rounds4-flatten20-lofo4
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --train-rounds 4 --lofo-only --lofo-draws 4 --out bench/results/detector_eval-rounds4-flatten20-lofo4
	$(PY) bench/detector_eval.py --ixi $(IXI_SOURCE) --train-rounds 4 --members 3 --no-lofo --out bench/results/detector_eval-members3-rounds4-flatten20
	$(PY) bench/kfold_compare.py bench/results/detector_eval-rounds4-flatten20 bench/results/detector_eval-members3-rounds4-flatten20 --names "one network" "the shipped recipe"
	$(PY) bench/outside_heads.py
	$(PY) bench/field_of_view.py --ixi $(IXI_SOURCE)
	$(PY) bench/acquisition.py --ixi $(IXI_SOURCE)
	$(PY) bench/acquisition.py --ixi $(IXI_SOURCE) --subjects training --conditions "bias field" --out bench/results/acquisition-training.json
	$(PY) bench/other_defacers.py --ixi $(IXI_SOURCE)
	$(PY) bench/pose_guard.py --ixi $(IXI_SOURCE)
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE)
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --families partial,eye_level --draws 12 --seed 3000 --out bench/results/anatomy-partial.json
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --folds data/kfold-rounds4-flatten20 --draws 1 --out bench/results/anatomy-kfold.json
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --folds data/kfold-rounds4-flatten20 --families partial,eye_level --draws 3 --seed 3000 \
		--out bench/results/anatomy-kfold-partial.json
	for run in kfold kfold-partial partial; do $(PY) bench/reading.py --ixi $(IXI_SOURCE) --run bench/results/anatomy-$$run.json \
		--out bench/results/reading-$$run.json || exit 1; done
	$(PY) bench/sweep_check.py --ixi $(IXI_SOURCE)
	$(PY) bench/sweep_check.py --head /usr/share/mricron/templates/ch2.nii.gz --out bench/results/sweep_check-colin27.json
	$(PY) bench/gan_refaced.py --ixi $(IXI_SOURCE)
	$(PY) bench/other_faces.py --ixi $(IXI_SOURCE)
	for n in 0 1 2; do $(PY) bench/other_faces.py --ixi $(IXI_SOURCE) --member $$n --out bench/results/other_faces-member$$n.json || exit 1; done
	$(PY) bench/deface.py --trials 5 --data $(IXI_SOURCE) --scans 8 --brain-scans 0
	$(PY) bench/pitch_search.py --data $(IXI_SOURCE)
	$(PY) bench/learning_curve.py --ixi $(IXI_SOURCE)
	$(PY) bench/smooth_training.py --ixi $(IXI_SOURCE)
	$(PY) bench/swap_training.py --ixi $(IXI_SOURCE)
	for n in 0 1; do $(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --ckpt data/swap_training/fit-$$n.pt --families none --draws 8 \
		--out data/swap_training/anatomy-none-$$n.json && $(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --ckpt data/swap_training/fit-$$n.pt \
		--draws 2 --out data/swap_training/anatomy-$$n.json || exit 1; done
	$(PY) bench/swap_training.py --ixi $(IXI_SOURCE) --donors average --fits data/average_training --out bench/results/average_training.json
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --ckpt data/average_training/fit-1.pt --families none --draws 8 \
		--out data/average_training/anatomy-none-1.json
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --ckpt data/average_training/fit-1.pt --draws 2 --out data/average_training/anatomy-1.json
	$(PY) bench/swap_training.py --ixi $(IXI_SOURCE) --donors average --flatten-mm 20 --fits data/average_training-flatten20 \
		--out bench/results/average_training-flatten20.json
	$(PY) bench/bias_training.py --ixi $(IXI_SOURCE)
	mkdir -p data/bias_training_mild && cp data/bias_training/fit-0.pt data/bias_training/fit-0.tsv data/bias_training_mild/
	$(PY) bench/bias_training.py --ixi $(IXI_SOURCE) --bias-field 1.0 0.3 --fits data/bias_training_mild \
		--out bench/results/bias_training-mild.json
	mkdir -p data/flatten_training && cp data/bias_training/fit-0.pt data/bias_training/fit-0.tsv data/flatten_training/
	$(PY) bench/bias_training.py --ixi $(IXI_SOURCE) --bias-field 0 0 --flatten-mm 20 --fits data/flatten_training \
		--out bench/results/flatten_training.json
	$(PY) bench/bias_training.py --ixi $(IXI_SOURCE) --seed 1 --bias-field 0 0 --flatten-mm 20 \
		--fits data/flatten_training_seed1 --out bench/results/flatten_training-seed1.json
	for s in 10 40; do mkdir -p data/flatten$${s}_training && cp data/bias_training/fit-0.pt data/bias_training/fit-0.tsv data/flatten$${s}_training/ \
		&& $(PY) bench/bias_training.py --ixi $(IXI_SOURCE) --bias-field 0 0 --flatten-mm $$s --fits data/flatten$${s}_training \
		--out bench/results/flatten$${s}_training.json || exit 1; done
	git show 02e70a9:src/defacegan/assets/detector.pt > data/detector-unflattened.pt.tmp && mv data/detector-unflattened.pt.tmp data/detector-unflattened.pt
	mkdir -p data/flatten20_candidate && cp data/flatten_training/fit-[01].* data/flatten20_candidate/
	$(PY) bench/bias_training.py --ixi $(IXI_SOURCE) --bias-field 0 0 --flatten-mm 20 --fits data/flatten20_candidate \
		--candidate data/detector-unflattened.pt --out bench/results/flattened_beside_unflattened.json
	for c in 0.5 1.0; do $(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --families none,partial,eye_level,blur --bias-field $$c \
		--out bench/results/anatomy-bias$$c.json || exit 1; done
	$(PY) bench/anatomy.py --ixi $(IXI_SOURCE) --families none,partial,eye_level,blur --out bench/results/anatomy-faces.json
	$(PY) bench/blur_or_fill.py --ixi $(IXI_SOURCE) --subjects training --draws 1 --seed 2000 --out bench/results/blur_or_fill-training.json
	$(PY) bench/blur_or_fill.py --ixi $(IXI_SOURCE)
	$(PY) bench/trust.py

# The re-facing audit's figures in the README: k-fold over every IXI head, Pix2Pix, CycleGAN and the baselines
# pasted into the scans, both re-identification matchers (bench/audit.py).
audit:
	test -f $(IXI)/manifest.csv || $(VENV)/bin/defacegan data build --source $(IXI_SOURCE) --out $(IXI)
	$(PY) bench/audit.py --cohort $(IXI)

# The same audit at the data's native 2 mm (128-px slices); 8-channel networks, two threads, to fit 2 CPU cores.
audit-native:
	test -f $(IXI)/manifest.csv || $(VENV)/bin/defacegan data build --source $(IXI_SOURCE) --out $(IXI)
	$(PY) bench/audit.py --cohort $(IXI) --size 128 --width 8 --threads 2 --out bench/results/audit-128

assets:  # rebuild the shipped brain mask in pydeface-template space (needs Colin27) and the pose guard's turned templates
	$(PY) -m defacegan.deface
	$(PY) -m defacegan.pose

bench:
	$(PY) bench/deface.py
	$(PY) bench/pipeline.py
	$(PY) bench/throughput.py
	$(PY) bench/check.py
	$(PY) bench/pix2pix.py --smoke

clean:
	rm -rf outputs multirun wandb
