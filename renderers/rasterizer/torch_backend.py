"""Portable visibility pass in plain PyTorch (CPU or CUDA, deterministic).

The model is nvdiffrast's: visibility is a hard decision made without gradients, and all
differentiable quantities are recomputed afterwards from the winning face (`triangles.py`).

Pipeline, vectorised over (batch, face), in cache-sized blocks of faces on CPU:

1. cull faces that cannot be drawn (`drawable_faces`) and clamp each face's box of pixel centres to
   the image;
2. test the first pixel of every box directly on the per-face arrays. Faces of dense meshes are about
   a pixel in size, so for most of them this is the only candidate;
3. the other pixels of boxes up to 64 pixels: boxes are grouped by size (2, 3-4, 5-8, ... pixels)
   and each group is evaluated as a (slot, face) grid broadcasting the per-face values, so nothing
   is gathered per pixel. Larger boxes are expanded into (face, pixel) pairs with
   ``repeat_interleave`` arithmetic. Both work in chunks of at most ``max_pairs`` candidates, so a
   close-up mesh covering the whole image cannot exhaust memory;
4. for each candidate: edge functions at the pixel centre, and 1/z interpolated linearly in screen
   space (perspective-correct depth);
5. keep the nearest face per pixel with ``scatter_reduce('amin')`` on an int64 key
   ``depth_bits << 32 | face``. The bit pattern of a positive float32 orders like its value, so the
   smallest key is the nearest face and equal depths go to the lower face index (float64 inputs are
   depth-tested at float32 precision). ``amin`` does not depend on the order of updates, so the
   result is deterministic on every device.

Host syncs (each sizes tensors that follow): one per block of faces, one for the size groups, and
one per chunk of large boxes. `visible_faces_sync_free` has none: it evaluates the first pixels of
every box on a fixed grid and expands the rest of the larger boxes within a fixed budget of pairs.

Watertightness: a pixel centre exactly on an edge shared by two faces must go to exactly one of them.
Corners are sorted by vertex id (`sort_corners`), so both faces evaluate a shared edge from the same
endpoint with the same operations and get bit-identical values (up to an exact sign flip). A zero
then goes to the face whose interior lies towards +x (towards +y for horizontal edges): the face that
contains the centre nudged by (eps, eps^2). The same rule hands a pixel centre lying exactly on a
vertex to exactly one face of its fan.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from renderers.rasterizer.triangles import (
    corner_differences,
    corner_tables,
    drawable_faces,
    planar_corners,
    sort_corners,
)

_EMPTY = torch.iinfo(torch.int64).max
_FACE_BITS = 32
_FACE_MASK = (1 << _FACE_BITS) - 1
_SLOT_GROUPS = 6
"""Boxes of up to 2^_SLOT_GROUPS pixels are evaluated slot by slot; larger ones pair by pair."""
_FIXED_SLOTS = 4
"""`visible_faces_sync_free` evaluates pixels 1 .. 3 of every box as a grid: the boxes of dense meshes
at crop resolution rarely hold more, so few pairs remain for the budgeted expansion."""
_CPU_BLOCK = 1 << 17
"""(batch x face) elements culled and tested per block on CPU: the ~40 arrays of a block stay in
cache, which makes the memory-bound elementwise steps about 1.5x faster than one pass over all."""
_GPU_BLOCK = 1 << 22
"""The same on accelerators, where blocks only bound memory (about 160 bytes per element) and each
costs one host sync."""


def visible_faces(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    near: float,
    cull_backfaces: bool,
    max_pairs: int,
) -> torch.Tensor:
    """Nearest drawable face at each pixel centre.

    Args:
        screen_vertices: (B, V, 3) pixel x, pixel y, depth (float32 or float64; validated by caller).
        faces: (F, 3) long, indices valid for V (validated by caller).
        image_size: (H, W).
        near: faces with a corner at depth <= near are not drawn.
        cull_backfaces: also skip faces seen from behind (see `drawable_faces`).
        max_pairs: most candidate (face, pixel) pairs expanded at once.

    Returns:
        pix_to_face: (B, H, W) long, -1 on background.
    """
    height, width = image_size
    batch, n_faces = screen_vertices.shape[0], faces.shape[0]
    device = screen_vertices.device
    best = torch.full((batch * height * width,), _EMPTY, dtype=torch.int64, device=device)
    if batch * n_faces > 0 and screen_vertices.shape[1] > 0:
        with torch.no_grad():
            _draw(best, screen_vertices.detach(), faces, height, width, near, cull_backfaces, max_pairs)
    pix_to_face = torch.where(best != _EMPTY, best & _FACE_MASK, -1)
    return pix_to_face.view(batch, height, width)


def visible_faces_sync_free(
    screen_vertices: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    near: float,
    cull_backfaces: bool,
    max_pairs: int,
    pair_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`visible_faces` with a fixed schedule: every tensor's size follows from the input shapes, so
    nothing waits for the device (no host sync; what a CUDA training step needs).

    Instead of collecting the boxes with more pixels (whose number only the device knows), pixels
    1 .. `_FIXED_SLOTS` - 1 of every box are evaluated as a (slot, face) grid, and the further pixels
    of larger boxes are expanded into at most ``pair_budget`` (face, pixel) pairs, found by binary
    search in the running total of their pixels. Candidates and depth keys are the same as
    `visible_faces`', so the result is bit-identical to it unless the budget runs out.

    Returns:
        pix_to_face: (B, H, W) long, -1 on background.
        dropped: () long, candidate pairs beyond the budget that were not drawn (0 when the result is
            exact); read it outside the training step (reading it is a host sync).
    """
    height, width = image_size
    batch, n_faces = screen_vertices.shape[0], faces.shape[0]
    device = screen_vertices.device
    best = torch.full((batch * height * width,), _EMPTY, dtype=torch.int64, device=device)
    dropped = torch.zeros((), dtype=torch.int64, device=device)
    if batch * n_faces > 0 and screen_vertices.shape[1] > 0:
        with torch.no_grad():
            dropped = _draw_fixed(
                best, screen_vertices.detach(), faces, height, width, near, cull_backfaces, max_pairs, pair_budget
            )
    pix_to_face = torch.where(best != _EMPTY, best & _FACE_MASK, -1)
    return pix_to_face.view(batch, height, width), dropped


def _draw_fixed(
    best: torch.Tensor,
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    near: float,
    cull_backfaces: bool,
    max_pairs: int,
    pair_budget: int,
) -> torch.Tensor:
    """`_draw` without host syncs (see `visible_faces_sync_free`); returns the () long dropped pairs."""
    batch, n_faces = screen.shape[0], faces.shape[0]
    device = screen.device
    n = batch * n_faces
    sorted_faces, flipped = sort_corners(faces)
    tables = corner_tables(screen, 0.5)
    block = max(1, (_CPU_BLOCK if device.type == "cpu" else _GPU_BLOCK) // batch)
    # Per face, block after block (each block's faces in (batch, face) order): the 19 per-face values,
    # the flat index of the box's first pixel, the face index and the pixels past the slot grid.
    columns = screen.new_empty(19, n)
    bases = torch.empty(n, dtype=torch.int64, device=device)
    face_ids = torch.empty(n, dtype=torch.int64, device=device)
    extra = torch.empty(n, dtype=torch.int64, device=device)
    for lo in range(0, n_faces, block):
        hi = min(lo + block, n_faces)
        part = slice(batch * lo, batch * hi)
        per_face, n_pixels, first_pixel = _first_pixels(
            best,
            planar_corners(tables, sorted_faces[lo:hi], batch),
            flipped[lo:hi],
            lo,
            height,
            width,
            near,
            cull_backfaces,
        )
        for row, values in zip(columns[:, part], per_face):
            row.copy_(values.reshape(-1))
        bases[part] = first_pixel.reshape(-1)
        face_ids[part] = torch.arange(lo, hi, device=device).repeat(batch)
        counts = n_pixels.reshape(-1)
        _draw_slots(best, columns[:, part], counts, bases[part], face_ids[part], _FIXED_SLOTS, width, max_pairs)
        # NaN counts (non-finite corners) fail the comparison: nothing more to draw for those faces.
        extra[part] = torch.where(counts > _FIXED_SLOTS, counts - _FIXED_SLOTS, 0).long()
    ends = extra.cumsum(0)
    starts = ends - extra
    box_width = columns[18].nan_to_num(0).long().clamp_(min=1)
    # The whole budget is evaluated whether used or not, so on accelerators the chunks are as large as the
    # blocks above (same memory) to keep the number of kernel launches down.
    chunk = max_pairs if device.type == "cpu" else max(max_pairs, _GPU_BLOCK)
    for lo in range(0, pair_budget, chunk):
        pair = torch.arange(lo, min(lo + chunk, pair_budget), device=device)
        owner = torch.searchsorted(ends, pair, right=True)
        valid = owner < n
        owner.clamp_(max=n - 1)
        # Pair k of a face is pixel _FIXED_SLOTS + k - start of its box.
        local = pair - starts.index_select(0, owner) + _FIXED_SLOTS
        cols = box_width.index_select(0, owner)
        row = torch.div(local, cols, rounding_mode="floor")
        col = local - row * cols
        rows = [c.index_select(0, owner) for c in columns[:18]]
        keys = _depth_keys(rows[16] + col, rows[17] + row, rows[:16], face_ids.index_select(0, owner), valid)
        pixels = torch.where(valid, bases.index_select(0, owner) + row * width + col, 0)
        best.scatter_reduce_(0, pixels, keys, reduce="amin")
    return (ends[-1] - pair_budget).clamp(min=0)


def _draw(
    best: torch.Tensor,
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    near: float,
    cull_backfaces: bool,
    max_pairs: int,
) -> None:
    """Scatter the depth keys of all covered (face, pixel) pairs into ``best`` ((B*H*W,) int64)."""
    batch, n_faces = screen.shape[0], faces.shape[0]
    sorted_faces, flipped = sort_corners(faces)
    # Coordinates relative to pixel centres: pixel (row i, col j), centred at (j + 0.5, i + 0.5), sits
    # at (j, i).
    tables = corner_tables(screen, 0.5)
    block = max(1, (_CPU_BLOCK if screen.device.type == "cpu" else _GPU_BLOCK) // batch)
    pending = []
    for lo in range(0, n_faces, block):
        hi = min(lo + block, n_faces)
        found = _draw_first_pixels(
            best,
            planar_corners(tables, sorted_faces[lo:hi], batch),
            flipped[lo:hi],
            lo,
            height,
            width,
            near,
            cull_backfaces,
        )
        if found is not None:
            pending.append(found)
    if not pending:
        return
    # Each block lists its boxes by group; take group g's run from every block.
    sizes = torch.stack([found[-1] for found in pending]).tolist()  # host sync
    starts = [0] * len(pending)
    for g in range(_SLOT_GROUPS + 2):
        runs = []
        for b, found in enumerate(pending):
            if sizes[b][g]:
                runs.append([part[..., starts[b] : starts[b] + sizes[b][g]] for part in found[:-1]])
                starts[b] += sizes[b][g]
        if not runs:
            continue
        columns, counts, bases, face_ids = (
            parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1) for parts in zip(*runs)
        )
        if g <= _SLOT_GROUPS:
            _draw_slots(best, columns, counts, bases, face_ids, 2**g, width, max_pairs)
        else:
            _draw_pairs(best, columns, counts, bases, face_ids, width, max_pairs)


def _draw_first_pixels(
    best: torch.Tensor,
    corners: torch.Tensor,
    flipped: torch.Tensor,
    first_face: int,
    height: int,
    width: int,
    near: float,
    cull_backfaces: bool,
) -> tuple[torch.Tensor, ...] | None:
    """Cull a block of faces, draw the first pixel of each box, and collect boxes with more pixels.

    Args:
        corners: (3 coords, 3 corners, B, Fb) pixel-centre-relative corners, sorted by vertex id.
        flipped: (Fb,) bool from `sort_corners`.
        first_face: face index of the block's first face.

    Returns:
        None when no box holds a second pixel, else for the N faces whose box does, ordered by
        group (see below): columns (19, N) float, the 16 `_depth_keys` coefficients, the box's first
        column and row and its width; counts (N,) float pixels in the box; bases (N,) long flat index
        of the box's first pixel; face_ids (N,) long; and (_SLOT_GROUPS + 2,) long faces per group.
    """
    batch, n_faces = corners.shape[2:]
    per_face, n_pixels, first_pixel = _first_pixels(
        best, corners, flipped, first_face, height, width, near, cull_backfaces
    )

    # Host sync: the number of boxes holding more than one pixel sizes what follows.
    multi = (n_pixels > 1).view(-1).nonzero().squeeze(1)
    if multi.numel() == 0:
        return None
    counts = n_pixels.view(-1).index_select(0, multi)
    # Group g (1 <= g <= _SLOT_GROUPS) holds boxes of 2^(g-1) + 1 .. 2^g pixels and evaluates their
    # pixels 1 .. 2^g - 1 together: at most half the work is wasted on pixels past a box's end, and
    # nothing is gathered per pixel. Larger boxes form the last group and are expanded pair by pair.
    group = counts.log2().ceil_().clamp_(max=_SLOT_GROUPS + 1).long()
    order = torch.argsort(group, stable=True)
    multi, counts = multi.index_select(0, order), counts.index_select(0, order)
    if batch * n_faces < 2**31:
        multi = multi.int()  # int32 ids gather about twice as fast on CPU
    columns = counts.new_empty(len(per_face), multi.numel())
    for row, values in zip(columns, per_face):
        torch.index_select(values.reshape(-1), 0, multi, out=row)
    bases = first_pixel.view(-1).index_select(0, multi)
    face_ids = (multi % n_faces + first_face).long()
    return columns, counts, bases, face_ids, torch.bincount(group, minlength=_SLOT_GROUPS + 2)


def _first_pixels(
    best: torch.Tensor,
    corners: torch.Tensor,
    flipped: torch.Tensor,
    first_face: int,
    height: int,
    width: int,
    near: float,
    cull_backfaces: bool,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """Cull a block of faces and draw the first pixel of each box (no host sync).

    Same arguments as `_draw_first_pixels`. Returns, each per (B, Fb) face: the 19 per-face values
    (the 16 `_depth_keys` coefficients, the box's first column and row and its width), the pixels in
    its box (float, 0 for faces not drawn, NaN for non-finite corners) and the flat index of the
    box's first pixel (long).
    """
    batch, n_faces = corners.shape[2:]
    device, dtype = corners.device, corners.dtype
    x, y, z = corners
    differences = corner_differences(x, y)
    keep, cross = drawable_faces(differences, z, flipped, near, cull_backfaces)
    (x0, x1, x2), (y0, y1, y2) = x, y

    # A face's box spans columns ceil(min x) .. floor(max x). Clamping in float keeps huge
    # coordinates from overflowing integer conversions.
    col_lo = x.amin(0).ceil_().clamp_(0, width)
    col_hi = x.amax(0).floor_().clamp_(-1, width - 1)
    row_lo = y.amin(0).ceil_().clamp_(0, height)
    row_hi = y.amax(0).floor_().clamp_(-1, height - 1)
    n_cols = col_hi.sub_(col_lo).add_(1).clamp_(min=0)
    # NaN corners give NaN counts, which fail every comparison below like culled faces.
    n_pixels = row_hi.sub_(row_lo).add_(1).clamp_(min=0).mul_(n_cols).mul_(keep)
    live = n_pixels > 0

    # Edges 0->1 and 1->2 have the interior on their positive side when cross > 0, edge 0->2 on its
    # negative side; s orients all three so that inside is positive. Multiplying by +-1 is exact, so
    # the faces sharing an edge keep bit-identical coefficients up to sign.
    s = cross.sign()
    ns = -s
    dx01, dy01, dx02, dy02 = differences
    edges = (s * dx01, s * dy01, ns * dx02, ns * dy02, s * (x2 - x1), s * (y2 - y1))
    # torch.full, not torch.tensor: no host-to-device copy (a sync on CUDA).
    tiny = torch.full((), -torch.finfo(dtype).tiny, device=device, dtype=dtype)
    zero = torch.zeros((), device=device, dtype=dtype)
    thresholds = []
    for k in range(3):
        sdx, sdy = edges[2 * k], edges[2 * k + 1]
        # "e > -tiny" is "e >= 0" for every normal float: the face owns zeros of this edge when its
        # inward normal (-s dy, s dx) points to +x, or to +y for a horizontal edge.
        owns_ties = torch.where(sdy == 0, sdx > 0, sdy < 0)
        thresholds.append(torch.where(owns_ties, tiny, zero))
    inv_area = cross.abs().reciprocal_()
    coefficients = [x0, y0, x1, y1, *edges, *thresholds, inv_area / z[0], inv_area / z[1], inv_area / z[2]]

    # First pixel of every box, evaluated in place on the (B, Fb) arrays.
    face_ids = torch.arange(first_face, first_face + n_faces, device=device)
    keys = _depth_keys(col_lo, row_lo, coefficients, face_ids, live)
    batch_base = (torch.arange(batch, device=device) * (height * width)).view(-1, 1)
    # Exact in float: row * W + col < H * W, far below 2^24 for any image this is used with.
    first_pixel = torch.where(live, row_lo * width + col_lo, zero).long() + batch_base
    best.scatter_reduce_(0, first_pixel.view(-1), keys.view(-1), reduce="amin")
    return (*coefficients, col_lo, row_lo, n_cols), n_pixels, first_pixel


def _draw_slots(
    best: torch.Tensor,
    columns: torch.Tensor,
    counts: torch.Tensor,
    bases: torch.Tensor,
    face_ids: torch.Tensor,
    n_slots: int,
    width: int,
    max_pairs: int,
) -> None:
    """Evaluate pixels 1 .. n_slots - 1 of N boxes as an (n_slots - 1, N) grid, broadcasting per-face values.

    columns: (19, N) the 16 coefficients, the box's first pixel (column, row) and its width;
    counts: (N,) pixels per box (float); bases: (N,) long flat index of each box's first pixel.
    """
    slots = torch.arange(1, n_slots, device=columns.device, dtype=columns.dtype).view(-1, 1)
    faces_per_chunk = max(1, max_pairs // (n_slots - 1))
    for lo in range(0, columns.shape[1], faces_per_chunk):
        part = slice(lo, lo + faces_per_chunk)
        cols = columns[:, part]
        box_width = cols[18]
        # slots < 2^_SLOT_GROUPS, so the float quotient floors exactly.
        row = (slots / box_width).floor_()
        col = slots - row * box_width
        valid = slots < counts[part]
        keys = _depth_keys(cols[16] + col, cols[17] + row, cols[:16], face_ids[part], valid)
        pixels = bases[part] + torch.where(valid, row * width + col, 0).long()
        best.scatter_reduce_(0, pixels.view(-1), keys.view(-1), reduce="amin")


def _draw_pairs(
    best: torch.Tensor,
    columns: torch.Tensor,
    counts: torch.Tensor,
    bases: torch.Tensor,
    face_ids: torch.Tensor,
    width: int,
    max_pairs: int,
) -> None:
    """Expand pixels 1 .. count - 1 of N large boxes into (face, pixel) pairs, in chunks of <= max_pairs.

    Same arguments as `_draw_slots`.
    """
    box_width = columns[18].long()
    extra = counts.long() - 1
    ends = extra.cumsum(0)
    # Pair k of a face is pixel 1 + k - start of its box; fold the 1 into the offset.
    offsets = ends - extra - 1
    for first, last, lo, hi in _chunks(ends, max_pairs):
        chunk_counts = ends[first:last].clamp(max=hi) - (ends[first:last] - extra[first:last]).clamp(min=lo)
        owner = first + torch.repeat_interleave(chunk_counts, output_size=hi - lo)
        local = torch.arange(lo, hi, device=best.device) - offsets.index_select(0, owner)
        cols = box_width.index_select(0, owner)
        row = torch.div(local, cols, rounding_mode="floor")
        col = local - row * cols
        rows = [c.index_select(0, owner) for c in columns[:18]]
        keys = _depth_keys(rows[16] + col, rows[17] + row, rows[:16], face_ids.index_select(0, owner))
        best.scatter_reduce_(0, bases.index_select(0, owner) + row * width + col, keys, reduce="amin")


def _depth_keys(
    px: torch.Tensor,
    py: torch.Tensor,
    coefficients: Sequence[torch.Tensor],
    face_ids: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depth-test keys of candidate pixel centres, ``_EMPTY`` where the centre is outside the face.

    Args:
        px, py: pixel centre coordinates (shifted by -0.5, i.e. the pixel's column and row), any shape
            broadcastable with the coefficients.
        coefficients: x0, y0, x1, y1 (sorted corners), the oriented edge vectors (s dx, s dy) of
            0->1, 0->2, 1->2, their tie thresholds, and 1 / (z_k |cross|) for k = 0, 1, 2.
        face_ids: face index of each candidate.
        valid: optional mask of candidates to consider at all.
    """
    x0, y0, x1, y1, sdx01, sdy01, sdx02, sdy02, sdx12, sdy12, t01, t02, t12, c0, c1, c2 = coefficients
    ax, ay = px - x0, py - y0
    bx, by = px - x1, py - y1
    e01 = sdx01 * ay - sdy01 * ax
    e02 = sdx02 * ay - sdy02 * ax
    e12 = sdx12 * by - sdy12 * bx
    inside = (e01 > t01) & (e02 > t02) & (e12 > t12)
    if valid is not None:
        inside &= valid
    # e_k / |cross| are the screen-space barycentrics, so this is sum_k b_k / z_k = 1 / depth.
    inv_depth = e12 * c0 + e02 * c1 + e01 * c2
    depth_bits = (1 / inv_depth).float().view(torch.int32).long()
    return torch.where(inside, (depth_bits << _FACE_BITS) | face_ids, _EMPTY)


def _chunks(ends: torch.Tensor, max_pairs: int) -> list[tuple[int, int, int, int]]:
    """Split pairs [0, total) into runs of <= max_pairs: (first face, end face, first pair, end pair).

    Host sync: the total and the run boundaries size the per-chunk tensors.
    """
    total = int(ends[-1])
    if total <= max_pairs:
        return [(0, ends.numel(), 0, total)]
    lo = torch.arange(0, total, max_pairs, device=ends.device)
    hi = (lo + max_pairs).clamp(max=total)
    first = torch.searchsorted(ends, lo, right=True)
    last = torch.searchsorted(ends, hi - 1, right=True) + 1
    return [tuple(row) for row in torch.stack([first, last, lo, hi], dim=1).tolist()]
