"""Issue 20: every bad input answered in one line, every result kept, memory bounded.

One test per item of the issue's list (the fuzz run against a live service is in test_fuzz.py;
item 7, the operator page, is in test_browser.py)."""
import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import vqc
from vqc.cli import main
from vqc.scorefiles import ScoreWriter, watch_folder
from vqc.engines import EngineSettings
from vqc.live import JudgeOptions, open_judge
from vqc.data import decode_image, read_split


def _rows(folder: Path) -> list[dict]:
    return list(csv.DictReader(open(folder / "scores.csv")))


def _one_error_line(err: str, *names: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "Traceback" not in line and "%|" not in line]
    errors = [line for line in lines if line.startswith("vqc: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


# 1 ---------------------------------------------------------------- overlays keep the input's relative path

def test_1_inputs_of_one_name_in_two_folders_get_two_overlays(demo_model_file, demo_root, tmp_path):
    data = tmp_path / "test"
    good, bad = sorted((demo_root / "test" / "good").glob("*.png"))[0], sorted((demo_root / "test" / "crack").glob("*.png"))[0]
    for folder, source in (("good", good), ("crack", bad)):
        (data / folder).mkdir(parents=True)
        shutil.copy(source, data / folder / "000.png")
    Image.open(bad).convert("RGB").save(data / "crack" / "000.jpg")  # same stem, another suffix: no clash
    out = tmp_path / "o"
    assert main(["predict", str(demo_model_file), str(data), "--out", str(out)]) == 0
    rows = _rows(out)
    assert len(rows) == 3
    assert sorted(r["overlay"] for r in rows) == ["overlays/crack/000.jpg.png", "overlays/crack/000.png",
                                                  "overlays/good/000.png"]
    assert all((out / r["overlay"]).is_file() for r in rows)
    assert len(list((out / "overlays").rglob("*.png"))) == 3


# 2 ---------------------------------------------------------------- one unreadable file does not stop a batch

def test_2_a_batch_scores_every_readable_image_and_lists_the_rest(demo_model_file, demo_root, tmp_path, capsys):
    images = [s.path for s in read_split(demo_root, "test")][:40]
    folder = tmp_path / "batch"
    folder.mkdir()
    for i, image in enumerate(images):
        shutil.copy(image, folder / f"{i:03d}.png")
    truncated = folder / "035.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = tmp_path / "o"
    assert main(["predict", str(demo_model_file), str(folder), "--out", str(out), "--no-overlays"]) == 1
    rows = _rows(out)
    assert len(rows) == 39 and str(truncated) not in {r["path"] for r in rows}
    listed = list(csv.DictReader(open(out / "unreadable.csv")))
    assert [r["path"] for r in listed] == [str(truncated)] and "035.png" in listed[0]["error"]
    captured = capsys.readouterr()
    assert "035.png" in captured.err and "scored 39 of 40 images" in captured.out

    small = tmp_path / "small"  # 3 good, 2 bad: 3 scored, 2 listed
    small.mkdir()
    for i in range(3):
        shutil.copy(images[i], small / f"good{i}.png")
    (small / "bad0.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    (small / "bad1.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "o2"
    assert main(["predict", str(demo_model_file), str(small), "--out", str(out), "--no-overlays"]) == 1
    assert len(_rows(out)) == 3 and len(list(csv.DictReader(open(out / "unreadable.csv")))) == 2


# 3 ---------------------------------------------------------------- a pixel limit below Pillow's bomb guard

def test_3_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, demo_model):
    big = tmp_path / "big.png"
    Image.new("L", (9000, 7000)).save(big)  # 63 MP, a 60 KB file
    with pytest.raises(vqc.VqcError, match=r"big.png is 9000 x 7000 \(63.0 megapixels\), over the limit of 50.2"):
        decode_image(big, max_pixels=demo_model.max_pixels)
    assert demo_model.max_pixels == 1000 * 224 * 224  # 1000 x the network input
    assert decode_image(big, max_pixels=None).shape == (7000, 9000, 3)  # a setting: it can be lifted
    with pytest.raises(vqc.VqcError, match="big.png"):
        demo_model.predict([big])


def test_3_the_banded_overlay_is_matplotlibs_jet_blend(rng):
    from matplotlib import colormaps

    from vqc.viz import BLEND_ROWS, overlay
    image = rng.integers(0, 256, (BLEND_ROWS * 2 + 7, 40, 3), dtype=np.uint8)  # three bands, the last short
    anomaly_map = rng.normal(1.0, 1.2, image.shape[:2]).astype(np.float32)
    level = (anomaly_map - 0.5) / 1.5
    alpha = np.clip(level, 0, 1)[..., None] * 0.6
    want = image * (1 - alpha) + colormaps["jet"](np.clip(level / 2, 0, 1))[..., :3] * 255 * alpha
    got = overlay(image, anomaly_map, 0.5, 2.0)
    assert np.abs(got.astype(int) - want.round().astype(int)).max() <= 1  # float32 against float64


def test_3_small_overlays_keep_the_legend_labels_and_carry_verdict_and_score(demo_model, demo_root):
    from dataclasses import replace

    from vqc.threshold import Verdict
    from vqc.viz import LEGEND_MIN_WIDTH, legend_height, prediction_overlay
    image = np.asarray(Image.open(read_split(demo_root, "test")[0].path).convert("RGB").resize((120, 90)))
    pred = demo_model.predict([image])[0]
    floor, top = demo_model.normal_range()
    pictures = {verdict: prediction_overlay(image, replace(pred, verdict=Verdict(verdict)), floor, top)
                for verdict in ("defective", "ok")}
    picture = pictures["defective"]
    assert picture.shape == (90 + legend_height(120), LEGEND_MIN_WIDTH, 3)  # set on a canvas wide enough
    labels = picture[-8:].min(axis=2) < 100  # dark text on the last rows: under the left, middle and right
    thirds = np.array_split(labels, 3, axis=1)
    assert all(third.any() for third in thirds)
    caption = picture[90:98].astype(int)  # the verdict in its colour, just beneath the image
    assert ((caption[..., 0] > 150) & (caption[..., 1] < 90)).any()
    assert ((pictures["ok"][90:98, :, 1].astype(int) > 100) & (pictures["ok"][90:98, :, 0] < 60)).any()
    rescored = prediction_overlay(image, replace(pred, verdict=Verdict.DEFECTIVE, score=pred.score * 3 + 1), floor, top)
    assert not np.array_equal(rescored[90:98], picture[90:98])  # the score is written there too


def test_3_overlays_are_drawn_at_a_bounded_size(demo_model, demo_root):
    from vqc.viz import OVERLAY_MAX_SIDE, legend_height, prediction_overlay
    image = np.asarray(Image.open(read_split(demo_root, "test")[0].path).convert("RGB").resize((4000, 3000)))
    pred = demo_model.predict([image])[0]
    picture = prediction_overlay(image, pred, *demo_model.normal_range())
    assert picture.shape == (1536 + legend_height(OVERLAY_MAX_SIDE), OVERLAY_MAX_SIDE, 3)
    # the bounded overlay's map is the full-resolution map, resized: the same hot spot
    full = pred.anomaly_map
    small = pred.map_at(1536, 2048)
    hot = np.unravel_index(full.argmax(), full.shape)
    assert small[int(hot[0] * 1536 / 3000), int(hot[1] * 2048 / 4000)] > np.percentile(small, 95)


# 4 ---------------------------------------------------------------- malformed multipart bodies: 400
# (on a live server, with the keep-alive connection checked, in test_fuzz.py)

@pytest.fixture(scope="module")
def client(demo_model_file, tmp_path_factory):
    from vqc.serve import create_app
    folder = tmp_path_factory.mktemp("robust-serve")
    model = folder / "m.safetensors"
    shutil.copy(demo_model_file, model)
    return TestClient(create_app(model), raise_server_exceptions=False)


def _part(filename: bytes, data: bytes, boundary: bytes = b"x") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename +
            b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")


def test_4_malformed_multipart_bodies_are_answered_400(client, demo_root):
    image = read_split(demo_root, "test")[0].path.read_bytes()
    cases = {
        "no boundary": ("multipart/form-data", _part(b"a.png", image)),
        "wrong boundary": ("multipart/form-data; boundary=y", _part(b"a.png", image)),
        "garbage part header": ("multipart/form-data; boundary=x", b"--x\r\n\x00\xff\xfe garbage\r\n\r\n" + image),
        "5000-character file name": ("multipart/form-data; boundary=x", _part(b"a" * 5000 + b".png", image)),
        "300-character file name": ("multipart/form-data; boundary=x", _part(b"a" * 300 + b".png", image)),
    }
    for name, (content_type, body) in cases.items():
        r = client.post("/v1/inspect", content=body, headers={"content-type": content_type})
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert "Traceback" not in r.text and len(r.json()["detail"].splitlines()) == 1
    ok = client.post("/v1/inspect", content=_part(b"a.png", image), headers={"content-type": "multipart/form-data; boundary=x"})
    assert ok.status_code == 200


# 5 ---------------------------------------------------------------- one line instead of a traceback

def test_5_out_that_is_a_file_is_refused_before_scoring(demo_model_file, demo_root, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("someone's notes")
    image = read_split(demo_root, "test")[0].path
    assert main(["predict", str(demo_model_file), str(image), "--out", str(taken)]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, "results", "is a file")
    assert "predict" not in captured.err  # refused before any scoring (no progress bar)
    assert taken.read_text() == "someone's notes"


def _with_header(source: Path, target: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(source), "pt") as f:
        metadata = dict(f.metadata())
    metadata.update(changes)
    save_file(load_file(str(source)), str(target), metadata=metadata)
    return target


def test_5_a_model_file_with_a_broken_config_is_one_line(demo_model_file, demo_root, tmp_path, capsys):
    config = json.loads(json.dumps(vqc.load(demo_model_file).config.__dict__))
    unknown = _with_header(demo_model_file, tmp_path / "unknown.safetensors",
                           config=json.dumps({**config, "colour_space": "lab"}))
    broken = _with_header(demo_model_file, tmp_path / "broken.safetensors", config="{not json")
    for model, words in ((unknown, ("unknown.safetensors", "colour_space")), (broken, ("broken.safetensors", "not valid JSON"))):
        assert main(["evaluate", str(model), str(demo_root)]) == 2
        _one_error_line(capsys.readouterr().err, *words)


def test_5_a_port_out_of_range_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "model.safetensors", "--port", "70000"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "a port is a number from 0 to 65535 (got '70000')" in err and "Traceback" not in err


# 6 ---------------------------------------------------------------- messages without Python internals

def test_6_a_non_image_upload_is_named_without_python_internals(client):
    r = client.post("/v1/inspect", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail == "cannot read image notes.txt: not an image file (PNG, JPEG, BMP, TIFF or WebP)"
    r = client.post("/v1/inspect", content=b"GIF89a\x00\x00", headers={"content-type": "image/gif"})
    assert "object at 0x" not in r.json()["detail"] and "_io" not in r.json()["detail"]


# 8 ---------------------------------------------------------------- --watch reports a file left empty

def test_8_watch_reports_an_empty_file_once_and_scores_it_once_written(demo_model_file, demo_root, tmp_path, capsys):
    drop = tmp_path / "camera"
    drop.mkdir()
    empty = drop / "part7.png"
    empty.write_bytes(b"")
    judge = open_judge(Path(demo_model_file), JudgeOptions(EngineSettings("torch")))
    writer = ScoreWriter(tmp_path / "out" / "scores.csv", judge, drop, overlays=False)
    watch_folder(drop, writer, interval=0.01, rounds=8)
    err = capsys.readouterr().err
    assert err.count("part7.png is empty (0 bytes)") == 1  # said once, not every look
    shutil.copy(read_split(demo_root, "test")[0].path, empty)  # the camera's second write
    watch_folder(drop, writer, interval=0.01, rounds=3)
    writer.close()
    assert [Path(r["path"]).name for r in _rows(tmp_path / "out")] == ["part7.png"]


# 9 ---------------------------------------------------------------- tiny images refused, small ones warned

def test_9_a_1x1_image_is_refused_and_a_far_smaller_one_warned(demo_model_file, demo_model, demo_root, tmp_path, capsys, client):
    folder = tmp_path / "small"
    folder.mkdir()
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    source = Image.open(read_split(demo_root, "test")[0].path).convert("RGB")
    h, w = demo_model.info["smallest_image"]
    source.resize((w // 3, h // 3)).save(folder / "thumb.png")
    source.resize((w, h)).save(folder / "normal.png")
    out = tmp_path / "o"
    assert main(["predict", str(demo_model_file), str(folder), "--out", str(out), "--no-overlays"]) == 1
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {"thumb.png", "normal.png"}
    assert "far smaller" in rows["thumb.png"]["warning"] and rows["normal.png"]["warning"] == ""
    listed = list(csv.DictReader(open(out / "unreadable.csv")))
    assert len(listed) == 1 and "dot.png is 1 x 1 pixels: too small to inspect" in listed[0]["error"]
    assert "warning:" in capsys.readouterr().err
    r = client.post("/v1/inspect", content=(folder / "thumb.png").read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and "far smaller" in r.json()["warning"]
    r = client.post("/v1/inspect", content=(folder / "dot.png").read_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 422 and "too small" in r.json()["detail"]


# 10 --------------------------------------------------------------- /docs from the package, not a CDN

def test_10_docs_page_loads_everything_from_the_service(client):
    import re
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert sources and not [s for s in sources if s.startswith(("http://", "https://", "//"))], sources
    script = next(s for s in sources if s.endswith("swagger-ui-bundle.js"))
    js = client.get(script)
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")


# 11 --------------------------------------------------------------- cross-site form posts refused

def test_11_a_cross_origin_form_post_is_refused_and_not_recorded(client, demo_root):
    image = read_split(demo_root, "test")[0].path.read_bytes()
    before = len(client.get("/v1/inspections").json()["items"])
    form = {"file": ("part.png", image, "image/png")}
    r = client.post("/v1/inspect", files=form, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    r = client.post("/v1/inspect", files=form, headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert len(client.get("/v1/inspections").json()["items"]) == before  # nothing carried out
    assert client.post("/v1/inspect", files=form, headers={"origin": "http://testserver"}).status_code == 200
    behind_proxy = {"origin": "https://vqc.plant", "x-forwarded-host": "vqc.plant"}  # a proxy rewrote Host
    assert client.post("/v1/inspect", files=form, headers=behind_proxy).status_code == 200
    assert client.post("/v1/inspect", files=form).status_code == 200  # curl, a PLC: no Origin


# 12 --------------------------------------------------------------- no keys in the access log

def test_12_a_key_in_the_url_is_blanked_in_the_access_log():
    from vqc.serve import HideSecretsInUrls
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", "/v1/inspect?station=s1&api_key=vqc_SECRET&x=1", "1.1", 401),
                               None)
    HideSecretsInUrls().filter(record)
    line = record.getMessage()
    assert "vqc_SECRET" not in line and "api_key=***" in line and "station=s1" in line
    # on a live `vqc serve` too: test_fuzz.py reads the server's own log


# 13 --------------------------------------------------------------- fit: progress on the coreset, one thread

def test_13_the_coreset_shows_progress_and_runs_on_one_thread(monkeypatch, capsys):
    import torch

    from vqc.training.heads import knn
    seen_threads = []
    real = knn.progress_bar

    def watching(*args, **kwargs):
        seen_threads.append(torch.get_num_threads())
        return real(*args, **kwargs)
    monkeypatch.setattr(knn, "progress_bar", watching)
    torch.set_num_threads(2)
    points = torch.randn(3000, 64)
    knn.greedy_coreset(points, 300, seed=0, progress=True)
    assert seen_threads == [1] and torch.get_num_threads() == 2  # one thread inside, restored after
    err = capsys.readouterr().err  # not a terminal: whole lines, the first and the last, no redraws
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 3
    assert "coreset" in err.splitlines()[-1] and "300/300" in err.splitlines()[-1]


# 14 --------------------------------------------------------------- --version, --help, keys list / revoke

def test_14_version_help_and_key_management(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"vqc {vqc.__version__}"
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{knn,nf,gmm,mdn,ae}" in text and "{resize,letterbox,native,tile}" in text
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(default: 20.0)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: predictions)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["benchmark", "--batches", "a,b"])
    assert "--batches must be comma-separated integers" in capsys.readouterr().err

    keys = tmp_path / "keys.txt"
    assert main(["keys", "add", str(keys), "--name", "line3"]) == 0
    assert main(["keys", "add", str(keys), "--name", "admin", "--role", "admin"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", str(keys)]) == 0
    assert capsys.readouterr().out.split("\n")[1:3] == ["  line3 (operator)", "  admin (admin)"]
    assert main(["keys", "revoke", str(keys), "--name", "line3"]) == 0
    assert "line3" not in keys.read_text() and "admin" in keys.read_text()
    assert main(["keys", "revoke", str(keys), "--name", "nobody"]) == 2
    assert main(["keys", "revoke", str(keys), "--name", "admin"]) == 2  # the last one stays
    assert "last key" in capsys.readouterr().err


def test_14_a_revoked_key_is_refused_by_a_running_service(demo_model_file, tmp_path):
    from vqc.access import add_key, revoke_key
    from vqc.serve import create_app
    keys = tmp_path / "keys.txt"
    first, second = add_key(keys, "line3"), add_key(keys, "admin")
    model = tmp_path / "m.safetensors"
    shutil.copy(demo_model_file, model)
    client = TestClient(create_app(model, api_key_file=str(keys), db="none"))
    assert client.get("/v1/model", headers={"x-api-key": first}).status_code == 200
    revoke_key(keys, "line3")
    assert client.get("/v1/model", headers={"x-api-key": first}).status_code == 401  # no restart
    assert client.get("/v1/model", headers={"x-api-key": second}).status_code == 200


def test_14_the_command_lines_choices_are_the_registries():
    from vqc import choices
    from vqc.geometry import MODES
    from vqc.training.heads import HEADS
    from vqc.training.torch_engine import TORCH_DTYPES as PRECISIONS
    assert choices.HEADS == tuple(HEADS) and choices.GEOMETRIES == MODES and choices.PRECISIONS == tuple(PRECISIONS)
