import numpy as np
import pytest

from benchmarks.datasets.io import (
    DatasetFormatError,
    Mesh,
    read_counted_points,
    read_lines,
    read_mesh,
    read_obj,
    read_point_rows,
    read_pp,
    read_vertex_ids,
    read_wrl,
    scale_to_mm,
)
from geometry.mesh_io import write_obj

VRML2 = """#VRML V2.0 utf8
# A comment mentioning Coordinate { point [ 9 9 9 ] } must not count.
Transform {
  children [
    Shape {
      appearance Appearance { texture ImageTexture { url "scan#1_F3D.bmp" } }
      geometry IndexedFaceSet {
        creaseAngle 3.14
        coord DEF co Coordinate { point [ 0 0 0, 1 0 0,
                                         1 1 0, 0 1 0 ] }
        texCoord TextureCoordinate { point [ 0 0, 1 0, 1 1, 0 1 ] }
        coordIndex [ 0, 1, 2, -1, 0, 2, 3, -1 ]
        texCoordIndex [ 0, 1, 2, -1, 0, 2, 3, -1 ]
      }
    }
    Shape { geometry IndexedFaceSet {
        coordIndex [ 0 1 2 3 -1 ]
        coord Coordinate { point [ 0 0 5 1 0 5 1 1 5 0 1 5 ] } } }
  ]
}
"""

VRML1 = """#VRML V1.0 ascii
Separator {
  Coordinate3 { point [ 0 0 0, 2 0 0, 2 2 0, 0 2 0 ] }
  IndexedFaceSet { coordIndex [ 0, 1, 2, 3, -1 ] }
}
"""

PICKED_POINTS = """<!DOCTYPE PickedPoints>
<PickedPoints>
 <DocumentData>
  <DateTime time="16:00:00" date="2019-01-01"/>
  <User name="annotator"/>
  <DataFileName name="natural_head_rotation.000001.obj"/>
  <templateName name=""/>
 </DocumentData>
 <point x="-45.5" y="30" z="1e1" active="1" name="0"/>
 <point y="31" x="-15" z="12" active="1" name="1"/>
 <point x="15" y="31" z="12" active="0" name="2"/>
</PickedPoints>
"""


def test_obj_reader_handles_quads_slashes_negative_ids_and_colours(tmp_path):
    path = tmp_path / "mesh.obj"
    path.write_text(
        "# exported\nmtllib m.mtl\no face\nv 0 0 0 1 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "vt 0 0\nvn 0 0 1\nusemtl skin\nf 1/1/1 2/1/1 3/1/1 4/1/1\nf -4//1 -2//1 -1//1\n"
    )
    mesh = read_obj(path)
    np.testing.assert_allclose(mesh.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    assert mesh.faces.dtype == np.int64
    # Uniform files take a vectorised path: same triangles, same order.
    uniform = tmp_path / "uniform.obj"
    uniform.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1/1 2/1/1 3/1/1 4/1/1\nf 1//1 3//1 4//1 2//1\n")
    np.testing.assert_array_equal(read_obj(uniform).faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3], [0, 3, 1]])


def test_obj_writer_round_trips(tmp_path):
    vertices = np.random.default_rng(0).normal(size=(10, 3))
    faces = np.array([[0, 1, 2], [2, 3, 9]])
    path = tmp_path / "deep" / "folder" / "out.obj"
    write_obj(path, vertices, faces)
    mesh = read_mesh(path)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, faces)
    with pytest.raises(ValueError, match="faces"):
        write_obj(path, vertices, faces + 10)


def test_malformed_obj_files_are_named(tmp_path):
    bad_index = tmp_path / "bad_index.obj"
    bad_index.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")
    with pytest.raises(DatasetFormatError, match="bad_index.obj"):
        read_obj(bad_index)
    bad_number = tmp_path / "bad_number.obj"
    bad_number.write_text("v 0 zero 0\n")
    with pytest.raises(DatasetFormatError, match="bad_number.obj"):
        read_obj(bad_number)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(DatasetFormatError, match="empty.obj: no vertices"):
        read_obj(empty)
    with pytest.raises(DatasetFormatError, match="missing.obj"):
        read_obj(tmp_path / "missing.obj")


def test_vrml2_indexed_face_sets_are_concatenated(tmp_path):
    path = tmp_path / "F0001_NE00WH_F3D.wrl"
    path.write_text(VRML2)
    mesh = read_wrl(path)
    assert mesh.vertices.shape == (8, 3)
    np.testing.assert_allclose(mesh.vertices[4:, 2], 5.0)
    # Shape 1: two triangles; shape 2 (coordIndex before coord): a quad split in two, offset by 4.
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    # Mixed polygon sizes, a doubled separator and no final -1.
    mixed = tmp_path / "mixed.wrl"
    mixed.write_text(
        "Coordinate { point [ 0 0 0, 1 0 0, 1 1 0, 0 1 0, 2 2 2 ] }\ncoordIndex [ 0 1 2 3 -1 -1 1 2 4 -1 0 2 4 ]"
    )
    np.testing.assert_array_equal(read_wrl(mixed).faces, [[0, 1, 2], [0, 2, 3], [1, 2, 4], [0, 2, 4]])


def test_vrml1_and_point_clouds(tmp_path):
    path = tmp_path / "scan.wrl"
    path.write_text(VRML1)
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    cloud = tmp_path / "cloud.wrl"
    cloud.write_text(
        "#VRML V2.0 utf8\nShape { geometry PointSet {\n  coord Coordinate { point [ 1 2 3, 4 5 6 ] } } }\n"
    )
    mesh = read_wrl(cloud)
    assert mesh.vertices.shape == (2, 3) and mesh.faces.shape == (0, 3)


def test_malformed_vrml_files_are_named(tmp_path):
    no_geometry = tmp_path / "no_geometry.wrl"
    no_geometry.write_text("#VRML V2.0 utf8\nShape { }\n")
    with pytest.raises(DatasetFormatError, match="no_geometry.wrl"):
        read_wrl(no_geometry)
    ragged = tmp_path / "ragged.wrl"
    ragged.write_text("Coordinate { point [ 0 0 0, 1 0 ] } coordIndex [ 0, 1, 2, -1 ]")
    with pytest.raises(DatasetFormatError, match="ragged.wrl.*multiple of 3"):
        read_wrl(ragged)
    out_of_range = tmp_path / "range.wrl"
    out_of_range.write_text("Coordinate { point [ 0 0 0, 1 0 0, 0 1 0 ] } coordIndex [ 0, 1, 5, -1 ]")
    with pytest.raises(DatasetFormatError, match="range.wrl"):
        read_wrl(out_of_range)
    with pytest.raises(DatasetFormatError, match="unsupported mesh format"):
        read_mesh(tmp_path / "scan.ply")


def test_meshlab_picked_points(tmp_path):
    path = tmp_path / "scan_picked_points.pp"
    path.write_text(PICKED_POINTS)
    points, names = read_pp(path)
    np.testing.assert_allclose(points, [[-45.5, 30, 10], [-15, 31, 12], [15, 31, 12]])
    assert names == ("0", "1", "2")
    truncated = tmp_path / "truncated.pp"
    truncated.write_text(PICKED_POINTS[:200])
    with pytest.raises(DatasetFormatError, match="truncated.pp"):
        read_pp(truncated)
    no_z = tmp_path / "no_z.pp"
    no_z.write_text('<PickedPoints><point x="1" y="2" name="a"/></PickedPoints>')
    with pytest.raises(DatasetFormatError, match="no_z.pp: point 0"):
        read_pp(no_z)


def test_landmark_rows_count_files_and_id_lists(tmp_path):
    bnd = tmp_path / "F0001_NE00WH_F3D.bnd"
    bnd.write_text("0\t-47.9\t22.5\t86.3\n\n1\t-30.0\t25.0\t90.0\n")
    np.testing.assert_allclose(read_point_rows(bnd, 3), [[-47.9, 22.5, 86.3], [-30, 25, 90]])
    with pytest.raises(DatasetFormatError, match="expected 83 points, found 2"):
        read_point_rows(bnd, 3, expected=83)
    land = tmp_path / "pose_0.land"
    land.write_text("3\n10 20\n30 40\n50 60\n")
    np.testing.assert_allclose(read_counted_points(land, 2), [[10, 20], [30, 40], [50, 60]])
    land.write_text("4\n10 20\n30 40\n")
    with pytest.raises(DatasetFormatError, match="pose_0.land: header announces 4"):
        read_counted_points(land, 2)
    ids = tmp_path / "region.txt"
    ids.write_text("1, 2 3\n4\n")
    np.testing.assert_array_equal(read_vertex_ids(ids), [1, 2, 3, 4])
    np.save(tmp_path / "region.npy", np.array([5, 6]))
    np.testing.assert_array_equal(read_vertex_ids(tmp_path / "region.npy"), [5, 6])
    ids.write_text("1 2.5\n")
    with pytest.raises(DatasetFormatError, match="region.txt"):
        read_vertex_ids(ids)
    listing = tmp_path / "list.txt"
    listing.write_text("a/b/c.jpg\n\n  d/e/f.jpg  \n")
    assert read_lines(listing) == ("a/b/c.jpg", "d/e/f.jpg")


def test_scale_to_mm_checks_plausibility_and_detects_units():
    face_in_metres = Mesh(np.array([[0.0, 0.0, 0.0], [0.15, 0.2, 0.1]]), np.zeros((0, 3), dtype=np.int64))
    scaled, factor = scale_to_mm(face_in_metres, "auto", "face.obj")
    assert factor == 1000.0 and np.allclose(scaled.vertices[1], [150, 200, 100])
    assert scale_to_mm(Mesh(face_in_metres.vertices * 100, face_in_metres.faces), "auto", "x")[1] == 10.0
    with pytest.raises(DatasetFormatError, match=r"face.obj: .* not a face in millimetres"):
        scale_to_mm(face_in_metres, 1.0, "face.obj")
    with pytest.raises(ValueError, match="unit_to_mm"):
        scale_to_mm(face_in_metres, -1.0, "face.obj")
