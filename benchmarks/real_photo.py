"""Real-photo protocol with ground truth: one scanned person (`benchmarks.textured_scan`, the shipped ``james``
scan, BSD-3) whose texture holds the two photographs taken at scan time.

Two sets of pictures, each run through the normal ``face3d reconstruct`` path (decode, detect, 68 landmarks,
align onto the predictor's crop: `preprocessing.image.process_image`; then the predictor:
`reconstruction.pipeline.RNetPredictor`, `FittingPredictor`):

* **photos**: the texture image is two photographs side by side; each half is one picture;
* **renders**: the textured scan rendered at a pose grid (pitch x yaw) under several lights over a gradient
  background at a photo-like resolution (`benchmarks.scan_render`).

Every reconstruction is scored as the licensed scan protocols score MICC and BU-3DFE (`metrics
.scan_to_mesh`): the NEUTRAL identity shape (expression set to zero) in mm, scan points within 95 mm of the
scan's nose tip, similarity ICP started from the inner 51 landmarks (the scan's annotated ones and the model's
landmark vertices), exact point-to-surface distances; a picture's value is the mean distance over the crop.
Two references are scored the same way: the **mean face** (no reconstruction) and the **model's ceiling**
(`benchmarks.ceiling.fit_model_to_mesh`: identity + expression fitted to the scan in 3D; the identity-only
ceiling is shown too). Each method's **share of the possible gain** is (mean face - method) / (mean face -
ceiling). It is one person: a check that numbers on synthetic faces carry over to a real face and real
photographs, not something to tune on.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.ceiling import INNER_LANDMARKS, CeilingSettings, fit_model_to_mesh, share_of_gain
from benchmarks.scan_render import LIGHTS, ScanRenderSettings, prepare_scan, render_scan
from benchmarks.textured_scan import JAMES_DIR, TexturedScan, frontal_transform, load_textured_scan, rotation_angle_deg
from metrics import DM_TO_MM, ErrorStats, scan_to_mesh, summarise
from metrics.protocols import GENOVA_CROP_RADIUS_MM
from preprocessing.detect import DEFAULT_DETECTOR

MEAN_FACE = "mean face"
CEILING = "ceiling (identity + expression)"
CEILING_IDENTITY = "ceiling (identity only)"
SECTIONS = ("photos", "renders")


@dataclass(frozen=True)
class RealPhotoSettings:
    """What `evaluate_real_photo` runs.

    scan_dir:     folder of the textured scan (`load_textured_scan`).
    photos:       score the scan's two photographs.
    pitches_deg, yaws_deg, lights: the render grid (`benchmarks.scan_render.LIGHTS`); an empty grid renders
                  nothing.
    all_lights:   render every pose under every light; False (default) gives the k-th pose of the pitch-major
                  grid the light k mod (number of lights): with 3 pitches x 5 yaws and 3 lights every yaw is
                  seen once under each light and at each pitch, for a third of the pictures.
    render:       resolution, focal length and background of the renders.
    fit_photos:   fit both photographs (analysis-by-synthesis costs seconds per picture).
    fit_renders:  renders to fit, at the pitch nearest 0 and yaws spread evenly over the grid's, the middle yaw
                  first (0: none). R-Net runs on every picture. A fit takes 10-40 s of CPU (FitSettings defaults),
                  so the default fits 3 pictures (2 photographs, 1 render) to keep the protocol near 3 minutes on 2
                  cores.
    ceiling:      settings of the ceiling fit.
    detector:     face detector and landmarks (`preprocessing.detect.DETECTORS`).
    """

    scan_dir: Path = JAMES_DIR
    photos: bool = True
    pitches_deg: tuple[float, ...] = (-10.0, 5.0, 20.0)
    yaws_deg: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    lights: tuple[str, ...] = ("key", "coloured", "flat")
    all_lights: bool = False
    render: ScanRenderSettings = ScanRenderSettings()
    fit_photos: bool = True
    fit_renders: int = 1
    ceiling: CeilingSettings = CeilingSettings()
    detector: str = DEFAULT_DETECTOR

    def __post_init__(self) -> None:
        unknown = [name for name in self.lights if name not in LIGHTS]
        if unknown:
            raise ValueError(f"unknown lights {unknown}; choose from {list(LIGHTS)}")
        if self.fit_renders < 0:
            raise ValueError(f"fit_renders must be >= 0, got {self.fit_renders}")

    def render_grid(self) -> list[tuple[float, float, str]]:
        """(pitch, yaw, light) of every render, pitch-major (see ``all_lights``)."""
        poses = [(p, y) for p in self.pitches_deg for y in self.yaws_deg]
        if not self.lights:
            return []
        if self.all_lights:
            return [(p, y, light) for p, y in poses for light in self.lights]
        return [(p, y, self.lights[k % len(self.lights)]) for k, (p, y) in enumerate(poses)]

    def fitted_renders(self) -> list[tuple[float, float, str]]:
        """The renders that are fitted (see ``fit_renders``)."""
        grid = self.render_grid()
        if not self.fit_renders or not grid:
            return []
        pitch = min(self.pitches_deg, key=abs)
        yaws = list(self.yaws_deg)
        if self.fit_renders == 1:
            yaws = [min(yaws, key=abs)]
        elif self.fit_renders < len(yaws):
            picks = np.round(np.linspace(0, len(yaws) - 1, self.fit_renders)).astype(int)
            yaws = [yaws[i] for i in sorted(set(picks.tolist()))]
        chosen = []
        for yaw in yaws:
            chosen.append(next(r for r in grid if r[0] == pitch and r[1] == yaw))
        return chosen


@dataclass(frozen=True)
class Picture:
    """One input picture: ``name``, encoded ``data`` (PNG), and for renders its pose and light."""

    section: str
    name: str
    data: bytes
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    light: str | None = None


@dataclass(frozen=True)
class PictureScore:
    """A method's error on one picture: mean and median point-to-surface distance (mm) over the crop."""

    section: str
    picture: str
    method: str
    mean_mm: float
    median_mm: float
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    light: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MethodRow:
    """A row of a section's table: ``stats`` over the per-picture mean errors (one value for the references)."""

    method: str
    level: str
    stats: ErrorStats
    share_of_gain: float | None

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "one value per": self.level,
            "count": self.stats.count,
            "mean_mm": self.stats.mean,
            "std_mm": self.stats.std,
            "median_mm": self.stats.median,
            "share_of_gain": self.share_of_gain,
        }


@dataclass(frozen=True)
class RealPhotoResult:
    """What `evaluate_real_photo` measured.

    scan:       facts about the scan (name, unit, eye distances, tilt against the model frame, crop points)
    seconds_per_picture: method -> mean seconds of its ``predict`` (timing, not accuracy)
    references: method -> (mean, median) mm of the mean face and the ceilings on the scan
    scores:     every (picture, method) score
    failed:     (section, picture, method, reason) of pictures without a reconstruction
    protocol:   the settings in words and numbers (for the report)
    ceiling_seconds, seconds: timings (not part of the deterministic accuracy)
    """

    scan: dict
    references: dict[str, tuple[float, float]]
    scores: tuple[PictureScore, ...]
    failed: tuple[tuple[str, str, str, str], ...]
    protocol: dict
    methods: tuple[str, ...]
    seconds_per_picture: dict[str, float] = field(default_factory=dict)
    ceiling_seconds: float = 0.0
    seconds: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def mean_face(self) -> float:
        return self.references[MEAN_FACE][0]

    @property
    def ceiling(self) -> float:
        return self.references[CEILING][0]

    def rows(self, section: str) -> list[MethodRow]:
        """Mean face, ceilings, then every method with pictures in ``section``."""
        rows = [
            MethodRow(name, "scan", ErrorStats(mean, 0.0, median, 1), share_of_gain(self.mean_face, mean, self.ceiling))
            for name, (mean, median) in self.references.items()
        ]
        for method in self.methods:
            values = [s.mean_mm for s in self.scores if s.section == section and s.method == method]
            if values:
                stats = summarise(values)
                rows.append(
                    MethodRow(method, "picture", stats, share_of_gain(self.mean_face, stats.mean, self.ceiling))
                )
        return rows

    def per_yaw(self, key: str = "yaw_deg") -> tuple[list[str], list[list]]:
        """Renders: mean error (mm) per method and yaw (or ``key`` = "light" / "pitch_deg"), with n, and a last row
        counting the renders where detection found no face (no method has a reconstruction of them)."""
        renders = [s for s in self.scores if s.section == "renders"]
        listed = self.protocol.get("render_list", [])
        values = sorted(
            {entry[key] for entry in listed} | {getattr(s, key) for s in renders}, key=lambda v: (isinstance(v, str), v)
        )
        columns = ["method"] + [f"{v:g}°" if isinstance(v, float) else str(v) for v in values] + ["all"]
        rows = []
        for method in self.methods:
            mine = [s for s in renders if s.method == method]
            if not mine:
                continue
            row: list = [method]
            for v in values:
                picked = [s.mean_mm for s in mine if getattr(s, key) == v]
                row.append(f"{np.mean(picked):.3f} (n={len(picked)})" if picked else None)
            row.append(f"{np.mean([s.mean_mm for s in mine]):.3f} (n={len(mine)})")
            rows.append(row)
        value_of = {entry["name"]: entry[key] for entry in listed}
        lost = {name for section, name, _, _ in self.failed if section == "renders" and name in value_of}
        if lost:
            counts = [sum(1 for name in lost if value_of[name] == v) for v in values]
            rows.append(["no face found (renders)"] + counts + [len(lost)])
        return columns, rows

    def accuracy_dict(self) -> dict:
        """The deterministic numbers (metrics.json ``accuracy.real_photo``)."""
        return {
            "scan": self.scan,
            "protocol": self.protocol,
            "references_mm": {name: {"mean": m, "median": med} for name, (m, med) in self.references.items()},
            "rows": {section: [row.as_dict() for row in self.rows(section)] for section in SECTIONS},
            "scores": [s.as_dict() for s in self.scores],
            "failed": [list(f) for f in self.failed],
        }


def split_photographs(texture: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The scan's texture image -> its two photographs (left and right halves), named by side."""
    width = texture.shape[1]
    if width < 2 * 64:
        raise ValueError(f"a texture {width} px wide cannot hold two photographs side by side")
    half = width // 2
    return [("photo-left", texture[:, :half]), ("photo-right", texture[:, half:])]


def encode_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def neutral_shape_mm(face_model, coeffs) -> np.ndarray:
    """(V, 3) mm neutral identity shape of the first picture of ``coeffs`` (expression set to zero)."""
    zeros = face_model.layout.zeros(1, device=coeffs.identity.device)
    with torch.no_grad():
        shape = face_model.shape(zeros.replace(identity=coeffs.identity[:1].to(torch.float32)))
    return shape[0].double().cpu().numpy() * DM_TO_MM


def score_shape(scan: TexturedScan, vertices_mm: np.ndarray, face_model) -> tuple[float, float]:
    """(mean, median) point-to-surface distance in mm of the scan's 95 mm nose-tip crop to the shape after
    similarity ICP from the inner landmarks (module docstring)."""
    ids = list(INNER_LANDMARKS)
    landmark_ids = face_model.landmark_ids.detach().cpu().numpy()
    errors = scan_to_mesh(
        scan.vertices,
        vertices_mm,
        face_model.triangles.detach().cpu().numpy(),
        crop_center=scan.nose_tip,
        scan_landmarks=scan.landmarks[ids],
        mesh_landmarks=vertices_mm[landmark_ids[ids]],
        distance="surface",
    )
    return errors.stats.mean, errors.stats.median


def make_pictures(scan: TexturedScan, face_model, settings: RealPhotoSettings) -> tuple[list[Picture], np.ndarray]:
    """Every picture of the protocol (photos, then renders) and a contact sheet of the renders ((H, W, 3) uint8,
    empty without renders)."""
    pictures = []
    if settings.photos:
        pictures += [
            Picture("photos", name, encode_png(np.ascontiguousarray(rgb)))
            for name, rgb in split_photographs(scan.texture)
        ]
    grid = settings.render_grid()
    thumbs = []
    if grid:
        prepared = prepare_scan(scan, frontal_transform(scan, face_model))
        for pitch, yaw, light in grid:
            rgb = render_scan(prepared, pitch, yaw, LIGHTS[light], settings.render)
            name = f"render-p{pitch:+g}-y{yaw:+g}-{light}"
            pictures.append(Picture("renders", name, encode_png(rgb), pitch, yaw, light))
            thumbs.append(rgb[::4, ::4])
    sheet = np.zeros((0, 0, 3), np.uint8)
    if thumbs:
        columns = len(settings.yaws_deg) * (len(settings.lights) if settings.all_lights else 1)
        rows = [np.concatenate(thumbs[i : i + columns], axis=1) for i in range(0, len(thumbs), columns)]
        sheet = np.concatenate(rows, axis=0)
    return pictures, sheet


def evaluate_real_photo(
    settings: RealPhotoSettings,
    face_model,
    predictors: Mapping[str, object],
    log: Callable[[str], None] = print,
    out_dir: Path | None = None,
    fitting: Sequence[str] = ("fit",),
) -> RealPhotoResult:
    """Run the protocol (module docstring).

    face_model: the model whose mean face and ceiling are scored (the predictors' model).
    predictors: method name -> `reconstruction.pipeline.Predictor` (``renderer`` and ``predict(CropBatch)``).
    fitting: the names among ``predictors`` that run only on the pictures chosen for fitting (``fit_photos``,
        ``fit_renders``); the others run on every picture.
    out_dir: where the contact sheet of the renders is written (``real_photo_renders.png``), or None.
    """
    from preprocessing.align import template_from_face_model
    from preprocessing.config import PrepareConfig
    from preprocessing.detect import make_detector
    from preprocessing.image import OK, process_image
    from reconstruction.pipeline import CropBatch

    start = time.perf_counter()
    scan = load_textured_scan(settings.scan_dir)
    frontal = frontal_transform(scan, face_model)
    crop_points = int((np.linalg.norm(scan.vertices - scan.nose_tip, axis=1) <= GENOVA_CROP_RADIUS_MM).sum())
    scan_facts = {
        "name": scan.name,
        "vertices": int(len(scan.vertices)),
        "triangles": int(len(scan.faces)),
        "unit_to_mm": scan.unit_to_mm,
        "eye_centre_distance_mm": round(scan.eye_centre_distance(), 2),
        "outer_eye_corner_distance_mm": round(float(np.linalg.norm(scan.landmarks[36] - scan.landmarks[45])), 2),
        "tilt_from_model_frame_deg": round(rotation_angle_deg(frontal.rotation), 2),
        "crop_points": crop_points,
    }
    log(f"real-photo protocol on the {scan.name} scan: mean face and model ceiling")
    mean_mm = face_model.mean_shape.detach().double().cpu().numpy() * DM_TO_MM
    references = {MEAN_FACE: score_shape(scan, mean_mm, face_model)}
    ceiling_start = time.perf_counter()
    for name, expression in ((CEILING, True), (CEILING_IDENTITY, False)):
        fit = fit_model_to_mesh(
            face_model,
            scan.vertices,
            scan.faces,
            scan.landmarks,
            settings=dataclasses.replace(settings.ceiling, expression=expression),
        )
        references[name] = score_shape(scan, fit.vertices_model * DM_TO_MM, face_model)
    ceiling_seconds = time.perf_counter() - ceiling_start

    pictures, sheet = make_pictures(scan, face_model, settings)
    files = {}
    if out_dir is not None and sheet.size:
        from PIL import Image

        files["real_photo_renders"] = Path(out_dir) / "real_photo_renders.png"
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(files["real_photo_renders"])
    fitted = set(settings.fitted_renders())

    def runs(method: str, picture: Picture) -> bool:
        if method not in fitting:
            return True
        if picture.section == "photos":
            return settings.fit_photos
        return (picture.pitch_deg, picture.yaw_deg, picture.light) in fitted

    n_fit = sum(runs(next(iter(fitting), ""), p) for p in pictures) if set(fitting) & set(predictors) else 0
    log(
        f"real-photo protocol: {sum(p.section == 'photos' for p in pictures)} photographs, "
        f"{sum(p.section == 'renders' for p in pictures)} renders at {settings.render.image_size} px; "
        f"methods {list(predictors)} (fitting {n_fit} of them)"
    )
    config = PrepareConfig(detector=settings.detector, workers=0)
    detector = make_detector(settings.detector, upsample=config.resolved_upsample)
    aligned_cache: dict[tuple, object] = {}
    scores, failed = [], []
    seconds: dict[str, list[float]] = {}
    for method, predictor in predictors.items():
        camera = predictor.renderer.camera
        crop_size = int(camera.image_size[0])
        template = template_from_face_model(predictor.renderer.face_model, camera)
        crop_config = dataclasses.replace(config, crop_size=crop_size)
        device = predictor.renderer.face_model.mean_shape.device
        for picture in pictures:
            if not runs(method, picture):
                continue
            key = (picture.name, crop_size, template.tobytes())
            if key not in aligned_cache:
                aligned_cache[key] = process_image(picture.data, detector, template, crop_config)
            result = aligned_cache[key]
            if result.status != OK:
                failed.append((picture.section, picture.name, method, result.reason or result.status))
                continue
            tic = time.perf_counter()
            predicted = predictor.predict(CropBatch.from_aligned(result.aligned, result.skin, device))
            seconds.setdefault(method, []).append(time.perf_counter() - tic)
            shape = neutral_shape_mm(predictor.renderer.face_model, predicted.coeffs)
            mean, median = score_shape(scan, shape, predictor.renderer.face_model)
            scores.append(
                PictureScore(
                    picture.section,
                    picture.name,
                    method,
                    mean,
                    median,
                    picture.pitch_deg,
                    picture.yaw_deg,
                    picture.light,
                )
            )
    protocol = {
        "photos": [p.name for p in pictures if p.section == "photos"],
        "pitches_deg": list(settings.pitches_deg),
        "yaws_deg": list(settings.yaws_deg),
        "lights": {name: dataclasses.asdict(LIGHTS[name]) for name in settings.lights},
        "all_lights": settings.all_lights,
        "renders": len(settings.render_grid()),
        "render_list": [
            {"name": p.name, "pitch_deg": p.pitch_deg, "yaw_deg": p.yaw_deg, "light": p.light}
            for p in pictures
            if p.section == "renders"
        ],
        "image_size": settings.render.image_size,
        "focal_px": settings.render.focal,
        "fit_photos": settings.fit_photos,
        "fitted_renders": [list(r) for r in settings.fitted_renders()],
        "ceiling": dataclasses.asdict(settings.ceiling),
        "crop_radius_mm": GENOVA_CROP_RADIUS_MM,
        "distance": "point-to-surface",
        "alignment": "similarity ICP from the inner 51 landmarks",
        "shape": "neutral identity (expression zero)",
    }
    return RealPhotoResult(
        scan_facts,
        references,
        tuple(scores),
        tuple(failed),
        protocol,
        tuple(predictors),
        {name: float(np.mean(v)) for name, v in seconds.items()},
        ceiling_seconds,
        time.perf_counter() - start,
        files,
    )


def percent(share: float | None) -> str | None:
    """A share as a whole percentage ("-12 %"), None for no share; never "-0 %"."""
    return None if share is None else f"{int(round(100 * share))} %"


def real_photo_markdown(result: RealPhotoResult, table: Callable[..., str]) -> list[str]:
    """Report lines (Markdown) of the protocol; ``table(columns, rows)`` formats a table."""
    scan, protocol = result.scan, result.protocol
    n_renders = protocol["renders"]
    lines = [
        "## Real photographs with ground truth (one scanned person)",
        "",
        f"The `{scan['name']}` scan (`benchmarks/assets/{scan['name']}`, BSD-3, menpo3d; {scan['vertices']} "
        f"vertices), settled from its own data: unit {scan['unit_to_mm']:g} mm (eye centres "
        f"{scan['eye_centre_distance_mm']:.1f} mm apart, outer eye corners {scan['outer_eye_corner_distance_mm']:.1f} "
        f"mm), tilted {scan['tilt_from_model_frame_deg']:.1f}° from the face model's frame. Score: the neutral "
        f"identity shape of each reconstruction, scan points within {protocol['crop_radius_mm']:g} mm of the scan's "
        f"nose tip ({scan['crop_points']} points), similarity ICP from the inner 51 landmarks, point-to-surface "
        "distance in mm (`metrics.scan_to_mesh`, as MICC and BU-3DFE); one value per picture (its mean "
        "distance). References: the mean face and the model's ceiling (`benchmarks.ceiling`: identity + "
        "expression fitted to the scan in 3D); share of gain = (mean face − method) / (mean face − ceiling). One "
        "person: a check, not a tuning target.",
        "",
    ]

    def section(name: str, title: str, text: str) -> list[str]:
        rows = [
            [
                r.method,
                r.level,
                r.stats.count,
                f"{r.stats.mean:.3f} ± {r.stats.std:.3f}",
                f"{r.stats.median:.3f}",
                percent(r.share_of_gain),
            ]
            for r in result.rows(name)
        ]
        return [
            f"### {title}",
            "",
            text,
            "",
            table(["method", "one value per", "n", "mean ± std (mm)", "median (mm)", "share of gain"], rows),
        ]

    if protocol["photos"]:
        lines += section(
            "photos",
            "The two photographs",
            f"The texture image's two halves ({', '.join(protocol['photos'])}), each through detection, "
            "68 landmarks, alignment and the predictor.",
        )
    if n_renders:
        lights = ", ".join(protocol["lights"])
        fitted = ", ".join(f"pitch {p:g}, yaw {y:g}, {light}" for p, y, light in protocol["fitted_renders"])
        lines += section(
            "renders",
            "Renders of the textured scan",
            f"{n_renders} renders at {protocol['image_size']}x{protocol['image_size']} (focal "
            f"{protocol['focal_px']:g} px, camera 1 m away, gradient background): pitches "
            f"{', '.join(f'{p:g}' for p in protocol['pitches_deg'])}° x yaws "
            f"{', '.join(f'{y:g}' for y in protocol['yaws_deg'])}°, "
            + (
                f"each under every light ({lights})"
                if protocol["all_lights"]
                else f"the lights ({lights}) taken in turn along the pitch-major grid"
            )
            + "; every other method on all, "
            f"fitting on {len(protocol['fitted_renders'])} ({fitted or 'none'}).",
        )
        lines += [
            "Mean error per yaw (mm; n pictures):",
            "",
            table(*result.per_yaw("yaw_deg")),
            "Mean error per light (mm; n pictures):",
            "",
            table(*result.per_yaw("light")),
        ]
        if "real_photo_renders" in result.files:
            lines += ["![renders](real_photo_renders.png)", ""]
    if result.failed:
        lines.append(
            f"No reconstruction for {len(result.failed)} (picture, method) pairs, e.g. "
            f"{result.failed[0][1]} ({result.failed[0][2]}): {result.failed[0][3]}."
        )
        lines.append("")
    per_picture = ", ".join(f"{name} {value:.2f} s" for name, value in result.seconds_per_picture.items())
    lines.append(
        f"Time per picture: {per_picture or 'none'}; the two ceiling fits {result.ceiling_seconds:.1f} s; "
        f"the whole protocol {result.seconds:.0f} s (timings vary with the machine's load)."
    )
    lines.append("")
    return lines
