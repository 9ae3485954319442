"""Dataset readers against small fixtures written in the exact on-disk formats (no ../shared data)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from training.datasets import READERS, DatasetError, open_dataset
from training.datasets.faces import (
    IBUG_68_FLIP_PAIRS,
    IBUG_68_POINTS,
    IBUG_OUTER_EYE_CORNERS,
    MTFL_EYES,
    MTFL_FLIP_PAIRS,
    MTFL_POINTS,
    read_300w,
    read_mtfl,
)
from training.datasets.images import CAT_FLIP_PAIRS, CAT_POINTS, read_cat_annotations, read_image_folder
from training.datasets.pose import LSP_JOINTS, MPII_JOINTS, read_lsp, read_lspet, read_mpii

MISSING = "missing image file"
CORRUPT = "corrupt or unreadable image"


# --- fixture writers ---------------------------------------------------------------------------

def write_image(path: Path, size=(40, 30), fmt: str | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"))
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all" * 10)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header parses but whose scan data stops half way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:  # the fixture is what it claims: header fine, pixels not
        assert im.size == (64, 64)
        with pytest.raises(OSError):
            im.load()
    return path


def lsp_joints(n: int, seed: int = 0) -> np.ndarray:
    """(n, 14, 3) MATLAB 1-based x, y in a 40 x 30 image, flag 1."""
    rng = np.random.default_rng(seed)
    joints = np.ones((n, 14, 3))
    joints[..., 0] = rng.uniform(1, 40, (n, 14))
    joints[..., 1] = rng.uniform(1, 30, (n, 14))
    return joints


def reasons(ds) -> dict[str, int]:
    return dict(ds.report.skipped)


# --- LSP / LSPET (joints.mat) ------------------------------------------------------------------

def make_lsp(root: Path, joints: np.ndarray, digits: int, layout: str) -> Path:
    """layout 'lsp': 3 x 14 x N; 'lspet': 14 x 3 x N (as the real files)."""
    root.mkdir(parents=True, exist_ok=True)
    mat = joints.transpose(2, 1, 0) if layout == "lsp" else joints.transpose(1, 2, 0)
    savemat(root / "joints.mat", {"joints": mat})
    for i in range(len(joints)):
        write_image(root / "images" / f"im{i + 1:0{digits}d}.jpg", seed=i)
    return root


def test_lsp_reads_3x14xN_and_converts_to_0_based(tmp_path):
    joints = lsp_joints(4)
    joints[1, :, 2] = 0  # LSP flag marks occlusion only: all joints stay annotated
    root = make_lsp(tmp_path / "lsp", joints, 4, "lsp")
    (root / "images" / "im0003.jpg").unlink()
    write_garbage(root / "images" / "im0004.jpg")

    ds = read_lsp(root)
    assert len(ds) == 2 and ds.report.kept == 2
    assert reasons(ds) == {MISSING: 1, CORRUPT: 1}
    assert [s.path.name for s in ds.samples] == ["im0001.jpg", "im0002.jpg"]
    np.testing.assert_allclose(ds.samples[0].points, joints[0, :, :2] - 1, atol=1e-5)
    assert ds.samples[1].visible.all()
    assert ds.landmark_names == LSP_JOINTS and len(ds.flip_pairs) == 6


def test_lspet_reads_14x3xN_and_uses_the_flag_as_annotated(tmp_path):
    joints = lsp_joints(3)
    joints[0, [2, 5], 2] = 0
    joints[2, 1:, 2] = 0  # a single annotated joint: unusable
    root = make_lsp(tmp_path / "lspet", joints, 5, "lspet")

    ds = read_lspet(root)
    assert len(ds) == 2
    assert reasons(ds) == {"fewer than 2 annotated joints": 1}
    assert ds.samples[0].path.name == "im00001.jpg"
    assert ds.samples[0].visible.sum() == 12 and not ds.samples[0].visible[[2, 5]].any()
    np.testing.assert_allclose(ds.samples[1].points, joints[1, :, :2] - 1, atol=1e-5)


def test_joints_mat_of_the_wrong_layout_is_refused_naming_the_expected_shape(tmp_path):
    lsp_root = make_lsp(tmp_path / "lsp", lsp_joints(2), 4, "lsp")
    with pytest.raises(DatasetError, match="LSPET stores 14 x 3 x N"):
        read_lspet(lsp_root)
    lspet_root = make_lsp(tmp_path / "lspet", lsp_joints(2), 5, "lspet")
    with pytest.raises(DatasetError, match="LSP stores 3 x 14 x N"):
        read_lsp(lspet_root)


def test_joints_mat_wrong_path_or_not_a_mat_file(tmp_path):
    with pytest.raises(DatasetError, match="no joints.mat"):
        read_lsp(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "joints.mat").write_text("not matlab " * 50)
    with pytest.raises(DatasetError, match="not a MATLAB file"):
        read_lspet(tmp_path / "bad")
    savemat(tmp_path / "bad" / "joints.mat", {"points": np.zeros((14, 3, 2))})
    with pytest.raises(DatasetError, match="'joints' variable"):
        read_lspet(tmp_path / "bad")


def test_truncated_joints_mat_is_a_dataset_error(tmp_path):
    (tmp_path / "joints.mat").write_text("not matlab")
    with pytest.raises(DatasetError, match="not a MATLAB file"):
        read_lsp(tmp_path)


# --- MPII (JSON release) -----------------------------------------------------------------------

def mpii_record(image: str, validation: int = 0, absent=()) -> dict:
    joints = [[10.0 + j, 5.0 + j] for j in range(16)]
    vis = [1] * 16
    for j in absent:
        joints[j], vis[j] = [-1.0, -1.0], 0
    return {"image": image, "joints": joints, "joints_vis": vis, "center": [20.0, 15.0], "scale": 0.1,
            "isValidation": validation}


def test_mpii_json_records_splits_and_skips(tmp_path):
    images = tmp_path / "images"
    for name in ("a.jpg", "b.jpg", "val.jpg"):
        write_image(images / name)
    write_garbage(images / "bad.jpg")
    records = [
        mpii_record("a.jpg", absent=(0, 9)),
        mpii_record("b.jpg", absent=range(15)),           # one joint left
        mpii_record("val.jpg", validation=1),
        mpii_record("gone.jpg"),
        mpii_record("bad.jpg"),
        {"image": "a.jpg", "center": [1, 2], "scale": 1},  # no joints
    ]
    ann = tmp_path / "mpii.json"
    ann.write_text(json.dumps(records))

    train = read_mpii(ann)
    assert [s.path.name for s in train.samples] == ["a.jpg"]
    assert reasons(train) == {"fewer than 2 annotated joints": 1, MISSING: 1, CORRUPT: 1, "malformed record": 1}
    sample = train.samples[0]
    assert not sample.visible[[0, 9]].any() and sample.visible.sum() == 14
    np.testing.assert_allclose(sample.points[1], [10.0, 5.0])  # (11, 6) 1-based -> 0-based
    half = 0.1 * 200 * 0.5 * 1.25
    np.testing.assert_allclose(sample.box, (20 - half, 15 - half, 20 + half, 15 + half))
    assert train.landmark_names == MPII_JOINTS

    assert [s.path.name for s in read_mpii(ann, split="val").samples] == ["val.jpg"]
    assert len(read_mpii(ann, split="all")) == 2


def test_mpii_wrong_path_and_wrong_format(tmp_path):
    with pytest.raises(DatasetError, match="no such MPII annotation file"):
        read_mpii(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("path 1 2 3")
    with pytest.raises(DatasetError, match="not JSON"):
        read_mpii(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"a": 1}')
    with pytest.raises(DatasetError, match="JSON list"):
        read_mpii(tmp_path / "y.json")


# --- MTFL / AFLW (5-point text list) -------------------------------------------------------------

MTFL_LINE = "{path} 34.32 47.28 40.4 34.0 45.04 34.8 36.24 46.0 50.8 52.08"


def test_mtfl_list_reads_x_then_y_relative_to_the_list_folder(tmp_path):
    root = tmp_path / "mtfl"
    write_image(root / "lfw_5590" / "a.jpg", size=(80, 80))
    write_image(root / "net_7876" / "b.jpg", size=(80, 80))
    write_image(root / "AFLW" / "c.jpg", size=(80, 80))
    write_image(root / "AFLW" / "trunc_ok_without_verify.jpg", size=(80, 80))
    write_garbage(root / "AFLW" / "garbage.jpg")
    write_truncated_jpeg(root / "AFLW" / "truncated.jpg")
    lines = [
        MTFL_LINE.format(path="lfw_5590/a.jpg"),
        MTFL_LINE.format(path="net_7876\\b.jpg"),                        # Windows separators
        MTFL_LINE.format(path="AFLW/c.jpg") + " 1 2 2 3",                 # original MTFL: + 4 attributes
        "",
        "AFLW/short.jpg 1 2 3",                                          # malformed: too few fields
        "AFLW/nan.jpg 1 2 3 4 5 6 7 8 9 x",                              # malformed: not a number
        MTFL_LINE.format(path="AFLW/gone.jpg"),
        MTFL_LINE.format(path="AFLW/garbage.jpg"),
        MTFL_LINE.format(path="AFLW/truncated.jpg"),
    ]
    (root / "new_training.txt").write_text("\n".join(lines) + "\n")

    ds = read_mtfl(root / "new_training.txt")
    assert [s.path.relative_to(root).as_posix() for s in ds.samples] == [
        "lfw_5590/a.jpg", "net_7876/b.jpg", "AFLW/c.jpg"]
    assert reasons(ds) == {"malformed line": 2, MISSING: 1, CORRUPT: 2}
    assert "new_training.txt:5" in ds.report.examples["malformed line"]
    s = ds.samples[0]
    assert s.points.dtype == np.float32 and s.points.shape == (5, 2)
    np.testing.assert_allclose(s.points[:, 0], [34.32, 47.28, 40.4, 34.0, 45.04], rtol=1e-6)
    np.testing.assert_allclose(s.points[:, 1], [34.8, 36.24, 46.0, 50.8, 52.08], rtol=1e-6)
    assert s.visible.all() and s.box == (0.0, 0.0, 80.0, 80.0)  # the image is the face crop
    assert ds.landmark_names == MTFL_POINTS and ds.flip_pairs == MTFL_FLIP_PAIRS == [(0, 1), (3, 4)]
    assert MTFL_EYES == (0, 1)

    # Without full decoding a truncated JPEG passes the header check (the loader skips it later).
    lazy = read_mtfl(root / "new_training.txt", verify=False)
    assert len(lazy) == 4 and reasons(lazy)[CORRUPT] == 1


def test_mtfl_rows_with_points_off_the_face_are_skipped_and_reported(tmp_path):
    # MTFL's net_7876/_* rows: the same face crop, points shifted ~30 px up onto the forehead
    root = tmp_path / "mtfl"
    write_image(root / "net_7876" / "_40_2014_0.jpg", size=(80, 80))
    write_image(root / "net_7876" / "ok.jpg", size=(80, 80))
    shifted = "net_7876/_40_2014_0.jpg 32.5 49.0 40.5 31.5 47.5 5.5 5.5 11.5 24.5 26.0"
    (root / "list.txt").write_text(shifted + "\n" + MTFL_LINE.format(path="net_7876/ok.jpg") + "\n")
    ds = read_mtfl(root / "list.txt")
    assert [s.path.name for s in ds.samples] == ["ok.jpg"]
    assert reasons(ds) == {"points off the face crop": 1}
    assert len(read_mtfl(root / "list.txt", keep_off_face=True)) == 2


def test_mtfl_wrong_path_and_wrong_format(tmp_path):
    with pytest.raises(DatasetError, match="MTFL list file"):
        read_mtfl(tmp_path / "new_training.txt")
    with pytest.raises(DatasetError, match="MTFL list file"):
        read_mtfl(tmp_path)  # a folder, not the list
    pts = tmp_path / "face.pts"
    pts.write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")
    with pytest.raises(DatasetError, match="no line parses.*MTFL list file"):
        read_mtfl(pts)
    (tmp_path / "only_missing.txt").write_text(MTFL_LINE.format(path="nope.jpg"))
    with pytest.raises(DatasetError, match="no usable mtfl samples.*missing image file"):
        read_mtfl(tmp_path / "only_missing.txt")


# --- 300-W (.pts) --------------------------------------------------------------------------------

def write_pts(path: Path, points: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    path.write_text(f"version: 1\nn_points:  {len(points)}\n{{\n{body}\n}}\n")
    return path


def face68(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 30, (68, 2))


def test_300w_reads_pts_recursively_and_converts_1_based(tmp_path):
    root = tmp_path / "300w"
    pts_a = face68(0)
    write_pts(root / "afw" / "1.pts", pts_a)
    write_image(root / "afw" / "1.jpg")
    write_pts(root / "lfpw" / "trainset" / "2.pts", face68(1))
    write_image(root / "lfpw" / "trainset" / "2.png")
    write_pts(root / "helen" / "gone.pts", face68(2))                       # no image
    write_pts(root / "helen" / "garbage.pts", face68(3))
    write_garbage(root / "helen" / "garbage.jpg")
    write_pts(root / "ibug" / "five.pts", face68(4)[:5])                    # wrong mark-up
    write_image(root / "ibug" / "five.jpg")
    (root / "ibug" / "broken.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n")  # malformed
    write_image(root / "ibug" / "broken.jpg")
    (root / "ibug" / "notes.txt").write_text("ignored")

    ds = read_300w(root)
    assert [s.path.relative_to(root).as_posix() for s in ds.samples] == ["afw/1.jpg", "lfpw/trainset/2.png"]
    assert reasons(ds) == {MISSING: 1, CORRUPT: 1, "not 68 points": 1, "malformed .pts file": 1}
    np.testing.assert_allclose(ds.samples[0].points, pts_a - 1, atol=1e-3)
    assert ds.samples[0].points.dtype == np.float32 and ds.samples[0].visible.all()
    assert ds.samples[0].box is None
    assert len(ds.landmark_names) == 68 and ds.landmark_names == IBUG_68_POINTS


def test_300w_wrong_path_and_wrong_format(tmp_path):
    with pytest.raises(DatasetError, match="300-W folder"):
        read_300w(tmp_path / "nowhere")
    write_image(tmp_path / "faces" / "a.jpg")
    with pytest.raises(DatasetError, match="no .pts files.*300-W folder"):
        read_300w(tmp_path / "faces")
    (tmp_path / "faces" / "a.pts").write_text("9 1 2 3 4\n")
    with pytest.raises(DatasetError, match="no .pts file parses.*300-W folder"):
        read_300w(tmp_path / "faces")


def test_ibug_flip_pairs_are_a_mirror_permutation():
    flat = [i for pair in IBUG_68_FLIP_PAIRS for i in pair]
    assert len(flat) == len(set(flat)) == 58
    assert set(range(68)) - set(flat) == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}  # the midline
    assert IBUG_OUTER_EYE_CORNERS in IBUG_68_FLIP_PAIRS
    assert (48, 54) in IBUG_68_FLIP_PAIRS and (0, 16) in IBUG_68_FLIP_PAIRS
    names = dict(enumerate(IBUG_68_POINTS))
    for a, b in IBUG_68_FLIP_PAIRS:  # eyebrow/eye pairs join a "right_" point with a "left_" one
        if "eye" in names[a]:
            assert names[a].startswith("right_") and names[b].startswith("left_")


# --- Cat dataset (.cat) ----------------------------------------------------------------------------

CAT_SAMPLE = "9 175 160 239 162 199 199 149 121 137 78 166 93 281 101 312 96 296 133 "  # 00000001_000


def test_cat_annotations_read_next_to_their_images(tmp_path):
    root = tmp_path / "CAT_DATASET"
    write_image(root / "CAT_00" / "00000001_000.jpg", size=(400, 300))
    (root / "CAT_00" / "00000001_000.jpg.cat").write_text(CAT_SAMPLE)
    (root / "CAT_00" / "00000002_000.jpg.cat").write_text(CAT_SAMPLE)          # image missing
    write_truncated_jpeg(root / "CAT_01" / "00000003_000.jpg")
    (root / "CAT_01" / "00000003_000.jpg.cat").write_text(CAT_SAMPLE)
    write_image(root / "CAT_01" / "00000004_000.jpg")
    (root / "CAT_01" / "00000004_000.jpg.cat").write_text("9 175 160 239")      # malformed
    write_image(root / "CAT_01" / "00000005_000.jpg")
    (root / "CAT_01" / "00000005_000.jpg.cat").write_text("2 1 2 3 4")          # too few points

    ds = read_cat_annotations(root)
    assert [s.path.name for s in ds.samples] == ["00000001_000.jpg"]
    assert reasons(ds) == {MISSING: 1, CORRUPT: 1, "malformed .cat file": 1, "not 9 points": 1}
    points = ds.samples[0].points
    assert points.shape == (9, 2) and points.dtype == np.float32 and ds.samples[0].visible.all()
    np.testing.assert_array_equal(points[0], [175, 160])
    np.testing.assert_array_equal(points[8], [296, 133])
    assert ds.landmark_names == CAT_POINTS and ds.flip_pairs == CAT_FLIP_PAIRS


def test_cat_flip_pairs_mirror_the_real_sample_annotation():
    points = np.array(CAT_SAMPLE.split()[1:], dtype=float).reshape(9, 2)
    perm = np.arange(9)
    for a, b in CAT_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    mirrored = points.copy()
    mirrored[:, 0] = 400 - 1 - mirrored[:, 0]
    mirrored = mirrored[perm]
    # The mirrored cat has the same layout as a real one: left eye left of the right eye, each
    # ear's point 1 left of its point 3, the tips (point 2) the highest of their ear.
    for p in (points, mirrored):
        assert p[0, 0] < p[1, 0]
        assert p[3, 0] < p[5, 0] and p[6, 0] < p[8, 0]
        assert p[4, 1] < p[[3, 5], 1].min() and p[3:6, 0].max() < p[6:9, 0].min()


def test_cat_wrong_path_and_wrong_format(tmp_path):
    with pytest.raises(DatasetError, match="Cat dataset folder"):
        read_cat_annotations(tmp_path / "nowhere")
    write_image(tmp_path / "afhq" / "flickr_cat_000002.jpg")
    with pytest.raises(DatasetError, match="no .cat files.*use folder:"):
        read_cat_annotations(tmp_path / "afhq")


# --- plain image folder ----------------------------------------------------------------------------

def test_image_folder_is_recursive_sorted_and_reports_skips(tmp_path):
    root = tmp_path / "shoes"
    write_image(root / "Shoe" / "b.jpg")
    write_image(root / "Boot" / "boot (10).jpg")
    write_image(root / "Boot" / "a.png")
    write_image(root / "Sandal" / "UPPER.JPG", fmt="JPEG")
    write_garbage(root / "Sandal" / "garbage.jpg")
    write_truncated_jpeg(root / "Sandal" / "truncated.jpeg")
    (root / "Sandal" / "readme.txt").write_text("not an image")
    write_image(root / ".thumbs" / "hidden.jpg")
    (root / ".DS_Store").write_bytes(b"\0\0")

    ds = read_image_folder(root)
    assert [s.path.relative_to(root).as_posix() for s in ds.samples] == [
        "Boot/a.png", "Boot/boot (10).jpg", "Sandal/UPPER.JPG", "Shoe/b.jpg"]
    assert all(s.points is None and s.visible is None and s.box is None for s in ds.samples)
    assert reasons(ds) == {CORRUPT: 2, "not an image file": 1}
    assert ds.landmark_names == [] and ds.flip_pairs == []
    assert len(read_image_folder(root, verify=False)) == 5  # the truncated one passes a header check


def test_image_folder_wrong_path_and_nothing_readable(tmp_path):
    with pytest.raises(DatasetError, match="folder of images"):
        read_image_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="folder of images"):
        read_image_folder(write_image(tmp_path / "one.jpg"))  # a file, not a folder
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no readable images.*not an image file"):
        read_image_folder(tmp_path / "empty")


# --- open_dataset --------------------------------------------------------------------------------

def test_open_dataset_dispatches_every_format(tmp_path):
    assert {"lsp", "lspet", "mpii", "mtfl", "300w", "cats", "folder"} <= set(READERS)
    write_image(tmp_path / "imgs" / "x.jpg", size=(80, 80))
    (tmp_path / "imgs" / "list.txt").write_text(MTFL_LINE.format(path="x.jpg"))
    write_pts(tmp_path / "imgs" / "x.pts", face68())
    (tmp_path / "imgs" / "x.jpg.cat").write_text(CAT_SAMPLE)
    folder = str(tmp_path / "imgs")
    assert open_dataset(f"mtfl:{folder}/list.txt").name == "mtfl"
    assert open_dataset(f"300w:{folder}").name == "300w"
    assert open_dataset(f"cats:{folder}").name == "cats"
    images = open_dataset(f"folder:{folder}")
    assert len(images) == 1 and reasons(images) == {"not an image file": 3}
    assert len(open_dataset(f"mtfl:{folder}/list.txt").subset("1:")) == 0


def test_open_dataset_unknown_format_and_bad_spec(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset format 'aflw'.*'mtfl'"):
        open_dataset(f"aflw:{tmp_path}")
    with pytest.raises(DatasetError, match="FORMAT:PATH"):
        open_dataset(str(tmp_path.name))
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(f"mtfl:{tmp_path}/missing.txt")
