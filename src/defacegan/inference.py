"""Inference: is there a face, was it removed, or was it replaced? For scans on disk or in memory.

The checkpoint (:func:`defacegan.detector_training.save_detector`) holds the input contract and
the weights of a plain-torch :class:`~defacegan.models.detector.DetectorNet`, or of several
(:func:`defacegan.detector_training.save_ensemble`, the shipped one), so loading it needs
torch alone: no Lightning, Hydra, TorchIO or MONAI. Scans are decoded and put on the contract's
grid in loader workers (decoding gzip dominates the cost), then their views are classified in
batches on the chosen device. Unreadable scans come back as predictions with an ``error``
instead of stopping the batch.

:mod:`defacegan.anatomy` gives a second opinion from a registration of the template: a head
nodded beyond the training poses, of which the network was unsure, is judged again on a grid turned
to take the nod off; then a ``removed`` verdict the network is unsure of whose eye, nose or chin region
still holds tissue becomes ``face``, and so does any ``replaced`` one, however sure the network
was, whose face also has the fine texture of the rest of the head. ``anatomy`` says on which scans
it is measured (:data:`ANATOMY_MODES`): by default only on those it could change (:func:`~defacegan.anatomy.needs_reading`),
after the network; ``"always"`` on every scan, in the loader workers (its shares reported for all);
``"never"``: the network alone. The first two give the same verdicts.

A head whose pose on the grid was not understood (:mod:`defacegan.pose`: a template head matches it
better turned a quarter or half way) is read again with its header's axes turned back by that turn
where the template is plain about it, and judged so if it is then upright (``righted``); otherwise,
unless a registration of the template finds it upright after all (:func:`defacegan.anatomy.registered_upright`,
not with ``anatomy="never"``), it is called ``face`` whatever the network saw: the network, never
trained on such grids, calls intact faces lying sideways ``removed``. A head that registration finds
upright but nodded beyond the training poses is judged with the nod taken off, however sure the
network was of it as it lay. A righted head is registered as stored too: where the template finds
it upright so, the guard turned it by a turn it did not have (a face cut above the mouth, turned upside
down, read ``replaced``; a defaced head, turned, read ``face``), and it is judged as it lies (``unrighted``).

A scan that the network and the anatomy call ``removed`` or ``replaced`` is judged once more with
its bias field taken off (:mod:`defacegan.bias_field`, N4, about a second), and called ``face`` if
the network then sees one (``evened_p_face``) and the anatomy, read on the evened scan, finds the eye
or nose region holding tissue (``evened_tissue``): a coil's field that darkens the face reads as a
face that is gone. Not with ``anatomy="never"``, the network alone.

A field strong enough to darken the face can also keep the template from registering onto the scan
as it is (an implausible scaling, or no upright pose found). Each registration that fails on the scan
as it is is tried once more on the evened scan (:class:`Reread`), whose geometry is the same; the
network still judges the scan as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from defacegan import anatomy as second_opinion
from defacegan.anatomy import kept_features, needs_reading, nod_to_undo, overrules
from defacegan.contract import InputContract, Placement, turned
from defacegan.io import Scan, ScanError, load_scan, require_head_extent, validate_volume
from defacegan.models.detector import DetectorEnsemble, DetectorNet
from defacegan.pose import RIGHTED_ABOVE, RIGHTING_BELOW, STRAIGHTENED_PAST, describe_turn, require_poolable, righting_turn, understood, upright_margin

if TYPE_CHECKING:
    from defacegan.deface import PitchSearch  # SimpleITK: imported where a registration runs

SHIPPED_CHECKPOINT = files("defacegan") / "assets" / "detector.pt"

ScanInput = str | os.PathLike | Scan | nib.Nifti1Image | np.ndarray
#: Where the anatomy's second opinion is measured: on the scans it could change (the default, a
#: registration of 2-3 s for each), on every scan, or on none.
ANATOMY_MODES = ("unsure", "always", "never")


@dataclass
class Prediction:
    """One scan's answer: ``probabilities`` per verdict and the ``verdict``; None when ``error`` says why."""

    source: str
    probabilities: dict[str, float] | None = None
    verdict: str | None = None
    error: str | None = None
    views: np.ndarray | None = None  # (V, S, S) in [0, 1]: what the model saw
    tissue: dict[str, float] | None = None  # each feature region's share holding tissue, where measured
    nod: float | None = None  # degrees the head lies nodded against the template (nose up +), where measured
    unnodded: float | None = None  # degrees the grid was turned by to take a nod beyond the training poses off
    texture: float | None = None  # the face's fine texture as a share of the head's, where measured
    overruled: bool = False  # the network said removed or replaced; the anatomy found the head's own face
    straightened: float | None = None  # degrees the head lay turned or rolled, when the grid was turned with it
    pose_margin: float | None = None  # the template's match upright minus turned (defacegan.pose); < 0: pose not understood
    righted: str | None = None  # the turn its header's axes were read with, when the pose guard found them turned (defacegan.pose)
    registered_upright: bool = False  # the pose guard could not read the pose; a registration found the head upright
    evened_p_face: float | None = None  # p(face) with the bias field taken off, where the network did not see a face (defacegan.bias_field)
    evened_tissue: dict[str, float] | None = None  # the feature regions' tissue shares on the evened scan, where the network saw a face in it
    registered_evened: bool = False  # the template would not register onto the scan as it is; it did onto the evened scan
    unrighted: str | None = None  # the turn the pose guard read the head's axes with, where a registration found it upright as stored

    @property
    def pose_understood(self) -> bool:
        return understood(self.pose_margin) or self.registered_upright

    @property
    def evened_to_face(self) -> bool:
        return turned_by_evened_look(self.verdict, self.evened_p_face)

    @property
    def evened_unconfirmed(self) -> bool:
        return left_by_evened_look(self.verdict, self.evened_tissue)


def turned_by_evened_look(verdict: str | None, evened_p_face: float | None) -> bool:
    """Called ``face`` because, once the bias field was taken off, the network saw one and the eye or
    nose region held tissue (the evened look is taken only where nothing else saw a face)."""
    return verdict == "face" and evened_p_face is not None


def left_by_evened_look(verdict: str | None, evened_tissue: dict[str, float] | None) -> bool:
    """Called ``removed`` or ``replaced`` though the network saw a face once the bias field was taken
    off: no eye, nose or chin region held tissue on the evened scan."""
    return verdict in ("removed", "replaced") and evened_tissue is not None


def needs_anatomy(probabilities: dict[str, float], threshold: float, straightened: bool = False) -> bool:
    """Whether a registration could change the network's verdict at ``threshold`` on a head whose grid
    was (not) ``straightened`` (:func:`defacegan.anatomy.needs_reading`)."""
    return needs_reading(verdict_of(probabilities, threshold), probabilities["face"], straightened)


def verdict_of(probabilities: dict[str, float], threshold: float, tissue: dict[str, float] | None = None,
               texture: float | None = None) -> str:
    """``face`` when p(face) ≥ ``threshold``; otherwise the likelier of ``removed`` and ``replaced``,
    unless ``tissue`` (:func:`defacegan.anatomy.feature_tissue`) shows a feature region still there
    and, against ``removed``, p(face) is not negligible, against ``replaced``, the face's ``texture``
    (:func:`defacegan.anatomy.face_texture`) is the head's own: then ``face``
    (:func:`defacegan.anatomy.overrules`)."""
    if probabilities["face"] >= threshold:
        return "face"
    verdict = likelier_defacing(probabilities)
    return "face" if overrules(verdict, probabilities["face"], tissue, texture) else verdict


def likelier_defacing(probabilities: dict[str, float]) -> str:
    """The likelier of ``removed`` and ``replaced``: what the network says of a scan it does not call ``face``."""
    return max(("removed", "replaced"), key=probabilities.__getitem__)


def as_scan(item: ScanInput) -> Scan:
    """Paths are loaded (as stored: the contract's grid reads any number type and layout); a NIfTI
    image is reoriented like a file; a bare array is taken as RAS+ 1 mm."""
    if isinstance(item, Scan):
        return item
    if isinstance(item, np.ndarray):
        return Scan(validate_volume(item), np.eye(4))
    if isinstance(item, nib.spatialimages.SpatialImage):
        canonical = nib.as_closest_canonical(item)
        return Scan(validate_volume(np.asanyarray(canonical.dataobj)), canonical.affine, item)
    return load_scan(item, copy=False)


def with_header_turned(scan: Scan, rotation: np.ndarray | None) -> Scan:
    """``scan`` with its header's affine turned by ``rotation`` (world axes; None: ``scan`` as it is),
    read back as a file with that header would be (RAS+ voxels)."""
    if rotation is None:
        return scan
    return as_scan(nib.Nifti1Image(np.asarray(scan.data), turned(scan.affine, rotation)))


def registered_upright(scan: Scan, contract: InputContract) -> PitchSearch | None:
    """:func:`defacegan.anatomy.registered_upright` for a ``scan`` whose pose the guard could not read,
    against the scan read turned back by the guard's best quarter or half turn on ``contract``'s grid."""
    return second_opinion.registered_upright(scan, with_header_turned(scan, righting_turn(scan.data, scan.affine, contract)))


class Reread:
    """One judged scan read again from its source for the registrations and judgements after the
    network's first look (its header turned as the pose guard righted it): loaded at most once,
    evened (:func:`defacegan.bias_field.evened`) at most once, and registered onto the evened scan
    from the first registration that fails on the scan as it is (``registers_evened``)."""

    def __init__(self, item: ScanInput, righting: np.ndarray | None = None, registers_evened: bool = False):
        self.item, self.righting, self.registers_evened = item, righting, registers_evened

    @cached_property
    def stored(self) -> Scan:
        """The scan as stored, its header not turned."""
        return as_scan(self.item)

    @cached_property
    def scan(self) -> Scan:
        return with_header_turned(self.stored, self.righting)

    @cached_property
    def flat(self) -> Scan:
        from defacegan.bias_field import evened

        return evened(self.scan)

    def registered_upright(self, contract: InputContract) -> PitchSearch | None:
        """:func:`registered_upright` on the scan as it is (unless registrations already go to the
        evened scan), else on the evened scan."""
        if not self.registers_evened and (search := registered_upright(self.scan, contract)) is not None:
            return search
        search = registered_upright(self.flat, contract)
        self.registers_evened |= search is not None
        return search

    def read(self, search: PitchSearch | None = None) -> second_opinion.Reading:
        """:func:`defacegan.anatomy.read` (``search`` from :meth:`registered_upright`) on the scan
        registrations go to; where the scan as it is will not register, on the evened scan. Raises
        :class:`~defacegan.io.ScanError` when neither does."""
        if not self.registers_evened:
            try:
                return second_opinion.read(self.scan, search=search)
            except ScanError:
                self.registers_evened, search = True, None  # that search was the scan's as it is
        return second_opinion.read(self.flat, search=search)


class AsStored(NamedTuple):
    """A righted scan to be judged as it lies (:meth:`Detector.judged_as_stored`): read again as
    stored, the registration that found it upright so, and the guard's turn it refuted."""

    again: Reread
    search: PitchSearch
    turn: str


class GridDataset(Dataset):
    """Scans as the contract's 3D input (and the anatomy's reading, :func:`defacegan.anatomy.read`,
    with ``anatomy``); failures are returned, not raised."""

    def __init__(self, items: Sequence[ScanInput], contract: InputContract, anatomy: bool = False, pose_check: bool = True):
        self.items = list(items)
        self.contract = contract
        self.anatomy = anatomy
        self.pose_check = pose_check

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        source = str(item) if isinstance(item, (str, os.PathLike)) else f"<input {index}>"
        try:
            scan = as_scan(item)
            require_head_extent(scan, "classify")
            placed, volume, margin = self.on_grid(scan)
            righting = None
            if self.pose_check and (margin < -RIGHTING_BELOW or placed.degrees > STRAIGHTENED_PAST):
                righting = righting_turn(scan.data, scan.affine, self.contract, None if placed.straightened else volume)
                turned_back = with_header_turned(scan, righting)
                placed_back, volume_back, margin_back = self.on_grid(turned_back)
                if margin_back >= RIGHTED_ABOVE and margin_back > margin:
                    scan, placed, volume, margin = turned_back, placed_back, volume_back, margin_back
                else:
                    righting = None
            again = Reread(scan)
            reading = again.read() if self.anatomy else None
            return {"index": index, "source": source, "volume": volume, "reading": reading, "error": "",
                    "registered_evened": again.registers_evened,
                    "straightened": placed.degrees if placed.straightened else None, "pose_margin": margin,
                    "righting": righting}
        except ScanError as error:
            return {"index": index, "source": source, "volume": None, "reading": None, "straightened": None,
                    "pose_margin": None, "righting": None, "error": str(error)}

    def on_grid(self, scan: Scan) -> tuple[Placement, torch.Tensor, float | None]:
        return on_grid(scan, self.contract, self.pose_check)


def on_grid(scan: Scan, contract: InputContract, pose_check: bool = True) -> tuple[Placement, torch.Tensor, float | None]:
    """Where ``contract``'s grid goes on ``scan``, the model's input there, and the pose guard's margin (None: not checked)."""
    placed = contract.place(scan.data, scan.affine)
    volume = contract.volume(scan.data, scan.affine, placed)
    return placed, volume, upright_margin(volume, contract.spacing) if pose_check else None


def collate(items: list[dict]) -> list[dict]:
    return items


def _network(entry: dict, device: torch.device | str) -> DetectorNet:
    net = DetectorNet(**entry["network"])
    net.load_state_dict(entry["state_dict"])
    return net.to(device).eval()


def load_network(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[DetectorNet | DetectorEnsemble, InputContract, dict]:
    """(network in eval mode, its input contract, its training facts) from a detector checkpoint:
    one network, or an ensemble of them (``members``, as ``make weights`` ships)."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    contract = InputContract.from_dict(checkpoint["contract"])
    if "members" in checkpoint:
        net = DetectorEnsemble([_network(member, device) for member in checkpoint["members"]]).eval()
    else:
        net = _network(checkpoint, device)
    return net, contract, checkpoint.get("facts", {})


class Detector:
    """A loaded detector: ``Detector(ckpt).predict(paths)`` → list of :class:`Prediction`.

    ``pose_check``: a head whose pose was not understood (:mod:`defacegan.pose`) is called ``face``;
    off for phantoms and generated objects that no human head resembles."""

    def __init__(
        self,
        ckpt: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        batch_size: int = 8,
        workers: int = 0,
        anatomy: str = "unsure",
        pose_check: bool = True,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = Path(ckpt) if ckpt is not None else Path(str(SHIPPED_CHECKPOINT))
        if not path.exists():
            raise FileNotFoundError(f"{path}: checkpoint not found (train one with `make weights`)")
        self.net, self.contract, self.facts = load_network(path, self.device)
        self.checkpoint = path
        self.threshold = threshold
        self.batch_size = batch_size
        self.workers = workers
        if anatomy not in ANATOMY_MODES:
            raise ValueError(f"anatomy={anatomy!r}: one of {', '.join(ANATOMY_MODES)}")
        self.anatomy = anatomy
        if pose_check:
            require_poolable(self.contract)
        self.pose_check = pose_check

    @property
    def view_names(self) -> list[str]:
        return self.contract.view_names

    def loader(self, items: Sequence[ScanInput]) -> DataLoader:
        dataset = GridDataset(items, self.contract, anatomy=self.anatomy == "always", pose_check=self.pose_check)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers, collate_fn=collate)

    @torch.inference_mode()
    def predict(self, items: Iterable[ScanInput], keep_views: bool = False) -> list[Prediction]:
        items = list(items)
        predictions: list[Prediction | None] = [None] * len(items)
        for batch in self.loader(items):
            good = [b for b in batch if not b["error"]]
            for bad in (b for b in batch if b["error"]):
                predictions[bad["index"]] = Prediction(bad["source"], error=bad["error"])
            if not good:
                continue
            views = self.contract.views(torch.stack([b["volume"] for b in good]).to(self.device))
            for b, named, v in zip(good, self.judge(views), views.cpu().numpy()):
                predictions[b["index"]] = self.conclude(items[b["index"]], b, named, v, keep_views)
        return predictions

    def conclude(self, item: ScanInput, b: dict, named: dict[str, float], v: np.ndarray, keep_views: bool,
                 as_stored: AsStored | None = None) -> Prediction:
        """The verdict on one scan from the network's first look (``named``, ``v``) and the loader's
        facts ``b``, with the pose guard's, the anatomy's and the evened look's say; ``as_stored``:
        the scan as it lies, the guard's righting refuted (:meth:`judged_as_stored`)."""
        # not righted where the pose is not understood (a righted one is); evened where the loader's reading had to be
        again = as_stored.again if as_stored else Reread(item, b["righting"], b["registered_evened"])
        reading, unnodded, evened, evened_tissue = b["reading"], None, None, None
        search, registered = as_stored.search if as_stored else None, as_stored is not None
        try:
            if b["righting"] is not None and self.anatomy != "never":  # checked before the righted scan is judged
                stored = self.judged_as_stored(again, b)
                if stored is not None:
                    facts, first_look, views, found = stored
                    return self.conclude(item, facts, first_look, views, keep_views, as_stored=found)
            straightened, upright = b["straightened"] is not None, understood(b["pose_margin"]) or registered
            if not upright and self.anatomy != "never":
                search = again.registered_upright(self.contract)
                registered = upright = search is not None
            if upright and reading is None and (self.anatomy == "always" or self.anatomy == "unsure" and (
                    registered or needs_anatomy(named, self.threshold, straightened))):
                reading = again.read(search)
            unnodded = nod_to_undo(named["face"], reading.nod, straightened, registered) if reading is not None else None
            if unnodded is not None:
                named, v = self.judge_unnodded(again.scan, unnodded)
            tissue, nod, texture = reading if reading is not None else (None, None, None)
            verdict = verdict_of(named, self.threshold, tissue, texture)
            if upright and verdict != "face" and self.anatomy != "never":
                evened, evened_tissue = self.look_evened(again, unnodded or 0.0)
        except ScanError as error:
            return Prediction(b["source"], error=str(error))
        return Prediction(b["source"], named, verdict if upright and not self.evened_shows_face(evened, evened_tissue) else "face",
                          views=v if keep_views else None, tissue=tissue, nod=nod, texture=texture,
                          unnodded=unnodded, overruled=verdict != verdict_of(named, self.threshold),
                          evened_p_face=evened, evened_tissue=evened_tissue,
                          straightened=b["straightened"], pose_margin=b["pose_margin"],
                          righted=None if b["righting"] is None else describe_turn(b["righting"]),
                          registered_upright=registered and not understood(b["pose_margin"]),
                          unrighted=as_stored.turn if as_stored else None, registered_evened=again.registers_evened)

    def judged_as_stored(self, righted: Reread, b: dict) -> tuple[dict, dict[str, float], np.ndarray, AsStored] | None:
        """Where the pose guard righted a head (``righted``: the scan read with its header's axes turned
        back), whether a registration of the template finds the head upright as stored
        (:func:`defacegan.anatomy.registered_upright`): a guard that rights a head it should not have
        turned a face with the eyes and nose cut off and the mouth and chin left upside down and called
        it ``replaced``, and turned plane-defaced heads into ones the network calls ``face``. If it does,
        the facts, the network's first look and the scan as stored (:class:`AsStored`) for judging it as
        it lies (:meth:`conclude`); None otherwise."""
        again = Reread(righted.stored)  # the scan already loaded, not read again
        search = second_opinion.registered_upright(again.scan, righted.scan)
        if search is None:
            return None
        placed, volume, margin = on_grid(again.scan, self.contract, self.pose_check)
        views = self.contract.views(volume[None].to(self.device))
        stored = {**b, "righting": None, "reading": None, "pose_margin": margin, "straightened": placed.degrees if placed.straightened else None}
        return stored, self.judge(views)[0], views.cpu().numpy()[0], AsStored(again, search, describe_turn(b["righting"]))

    def judge_unnodded(self, scan: Scan, nod: float) -> tuple[dict[str, float], np.ndarray]:
        """The network's probabilities and the views for ``scan`` on a grid turned by ``nod`` degrees."""
        volume = self.contract.volume(scan.data, scan.affine, self.contract.place(scan.data, scan.affine, nod))
        views = self.contract.views(volume[None].to(self.device))
        return self.judge(views)[0], views.cpu().numpy()[0]

    def look_evened(self, again: Reread, nod: float) -> tuple[float, dict[str, float] | None]:
        """p(face) for the scan with its bias field taken off (:func:`defacegan.bias_field.evened`), placed
        on the grid again (a field that darkens the face moves where the head's extent is found); and,
        where that reaches the threshold, the feature regions' tissue shares read on the evened scan."""
        p_face = self.judge_unnodded(again.flat, nod)[0]["face"]
        return p_face, second_opinion.read(again.flat).tissue if p_face >= self.threshold else None

    def evened_shows_face(self, p_face: float | None, tissue: dict[str, float] | None) -> bool:
        """Whether the evened look (:meth:`look_evened`; None: none taken) sees a face: the network does
        and the eye, nose or chin region holds tissue (:func:`defacegan.anatomy.kept_features`). Both, because
        the network alone, on evened scans it was never trained on, saw faces in defaced heads too (a
        mask-defaced head under Rician noise, bench/acquisition.py)."""
        return p_face is not None and p_face >= self.threshold and bool(kept_features(tissue or {}))

    def judge(self, views: torch.Tensor) -> list[dict[str, float]]:
        """The network's probabilities per verdict for each scan's ``views``."""
        probabilities = torch.softmax(self.net(views).float(), dim=1).cpu().numpy()
        return [{name: float(value) for name, value in zip(self.contract.classes, p)} for p in probabilities]


def predict(items: Iterable[ScanInput], ckpt: str | os.PathLike | None = None, **options) -> list[Prediction]:
    """Probabilities and verdict (face / removed / replaced) for each scan (paths, :class:`Scan`,
    NIfTI images or RAS+ arrays)."""
    keep_views = options.pop("keep_views", False)
    return Detector(ckpt, **options).predict(items, keep_views=keep_views)
