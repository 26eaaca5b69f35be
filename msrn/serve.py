"""`msrn serve`: a local web page where a user drops an image and sees its labels and attention.

Built on Flask (the `serve` extra). One page, inline HTML/CSS/JS, talks to two JSON endpoints:
`GET /api/info` (labels, input size) and `POST /api/predict` (multipart field `image`), which
returns the image's record as `msrn predict` writes it, the best scores, and base64 PNG
attention panels for the top labels at the three depths. Bad uploads get a JSON `{"error"}`
with status 400 (413 when too large). Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import argparse
import base64
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from msrn.data.base import open_image
from msrn.errors import MSRNError
from msrn.predict import (
    Predictor,
    add_checkpoint_arguments,
    add_decoding_arguments,
    add_fast_argument,
    decoding_options,
    load_from_args,
)

MAX_UPLOAD_MB = 20
SHOWN_SCORES = 10  # scores listed on the page, best first


def _b64_png(image: Image.Image) -> str:
    """A PIL image as a base64 PNG string for a data: URL."""
    from msrn.explain import png_bytes

    return base64.b64encode(png_bytes(image)).decode("ascii")


def analyse(predictor: Predictor, image: Image.Image, name: str, explain_k: int) -> dict[str, Any]:
    """The JSON answer for one image: its record, its best scores and (for MSRN) attention panels."""
    (result,) = predictor.iter_results([image], explain_k=explain_k)
    record, probs, expl = {**result.record, "image": name}, result.probabilities, result.explanation
    out: dict[str, Any] = {"record": record, "depths": [], "panels": []}
    if expl is not None:
        from msrn.explain import concentration, panels

        out["depths"] = expl.depth_titles()
        out["panels"] = [
            {"label": expl.labels[j], "score": round(expl.scores[j], 6), "images": [_b64_png(p) for p in row],
             "peaks": [round(concentration(m[j]), 2) for m in expl.maps]}
            for j, row in enumerate(panels(expl))
        ]
    reported = {x["label"] for x in record["labels"]}
    out["scores"] = [
        {"label": predictor.labels[i], "score": round(float(probs[i]), 6),
         "threshold": round(float(predictor.thresholds[i]), 6), "reported": predictor.labels[i] in reported}
        for i in probs.argsort(kind="stable")[::-1][:SHOWN_SCORES]
    ]
    return out


def create_app(predictor: Predictor, explain_k: int = 3, max_upload_mb: float = MAX_UPLOAD_MB) -> Any:
    """The Flask application serving one predictor."""
    try:
        from flask import Flask, jsonify, request
    except ImportError:
        raise MSRNError("msrn serve needs Flask: pip install 'msrn[serve]'") from None
    from msrn.models.msrn import MSRN

    explain_k = explain_k if isinstance(predictor.model, MSRN) else 0
    app = Flask("msrn.serve")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()  # one forward at a time: the model is shared and CPU-bound

    @app.get("/")
    def page() -> Any:
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/api/info")
    def info() -> Any:
        return jsonify(labels=predictor.labels, image_size=predictor.image_size, explain=explain_k > 0,
                       max_upload_mb=max_upload_mb)

    @app.post("/api/predict")
    def predict() -> Any:
        upload = request.files.get("image")
        if upload is None:
            return jsonify(error="no image in the request (send it as the multipart field 'image')"), 400
        name = Path(upload.filename or "upload").name
        try:
            image = open_image(upload.read(), name, exif_orientation=predictor.exif_orientation,
                               max_pixels=predictor.max_pixels)
            with lock:
                return jsonify(analyse(predictor, image, name, explain_k))
        except MSRNError as e:
            return jsonify(error=str(e)), 400

    @app.errorhandler(413)
    def too_large(_e: Exception) -> Any:
        return jsonify(error=f"the upload is larger than {max_upload_mb:g} MB"), 413

    return app


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """A threaded WSGI server (Werkzeug's) for the app; port 0 picks a free one (see `.port`).

    The socket is bound here so that a taken port is one MSRNError line (Werkzeug would exit).
    """
    from werkzeug.serving import make_server as werkzeug_server

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise MSRNError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    with sock:
        return werkzeug_server(host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `msrn serve`."""
    add_checkpoint_arguments(parser)
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this computer only)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="report labels with probability >= T (default: the checkpoint's thresholds, else 0.5)")
    parser.add_argument("--explain-labels", type=int, default=3, metavar="N",
                        help="attention panels for the N best labels (default 3)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest accepted upload")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_fast_argument(parser)
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run `msrn serve` until interrupted."""
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise MSRNError("--threshold must lie in [0, 1]")
    predictor = load_from_args(args, threshold=args.threshold, device=args.device, fast=args.fast,
                               **decoding_options(args))
    app = create_app(predictor, max(0, args.explain_labels), args.max_upload_mb)
    server = make_server(app, args.host, args.port)
    print(f"msrn serve: {args.checkpoint} on http://{args.host}:{server.port}/ (Ctrl+C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MSRN · tag an image</title>
<style>
  :root { --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#3b5bdb; --accent-soft:#edf2ff;
          --ok:#2b8a3e; --card:#fff; --bg:#f5f6f8; }
  * { box-sizing: border-box; }
  body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
         color:var(--ink); background:var(--bg); }
  header { padding:22px 32px 14px; }
  header h1 { margin:0; font-size:22px; letter-spacing:-.01em; }
  header p { margin:4px 0 0; color:var(--muted); }
  main { display:grid; grid-template-columns:minmax(280px,360px) 1fr; gap:22px; padding:0 32px 32px;
         align-items:start; }
  @media (max-width:900px) { main { grid-template-columns:1fr; } }
  .card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:18px;
          box-shadow:0 1px 2px rgba(16,24,40,.04); }
  .card h2 { margin:0 0 12px; font-size:15px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
  #drop { display:flex; flex-direction:column; align-items:center; justify-content:center; gap:6px; min-height:170px;
          border:2px dashed #c3cad5; border-radius:10px; text-align:center; cursor:pointer; padding:14px;
          transition:background .15s,border-color .15s; color:var(--muted); }
  #drop.over, #drop:hover { border-color:var(--accent); background:var(--accent-soft); color:var(--accent); }
  #drop strong { color:var(--ink); font-size:16px; }
  #file { display:none; }
  #preview { display:none; width:100%; margin-top:14px; border-radius:8px; border:1px solid var(--line); }
  #status { margin-top:12px; min-height:1.4em; color:var(--muted); }
  #status.error { color:#c92a2a; font-weight:600; }
  .tags { display:flex; flex-wrap:wrap; gap:6px; margin-bottom:14px; min-height:28px; }
  .tag { background:var(--accent); color:#fff; padding:3px 10px; border-radius:999px; font-weight:600; font-size:14px; }
  .none { color:var(--muted); font-style:italic; }
  .label-row { display:grid; grid-template-columns:minmax(90px,160px) 1fr 58px; align-items:center; gap:10px;
               padding:4px 0; }
  .label-row .name { overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
  .label-row.on .name { font-weight:700; }
  .bar { position:relative; height:12px; background:#eef0f3; border-radius:6px; overflow:visible; }
  .bar .fill { height:100%; border-radius:6px; background:#adb5bd; }
  .label-row.on .bar .fill { background:var(--accent); }
  .bar .thr { position:absolute; top:-3px; width:2px; height:18px; background:var(--ink); opacity:.55; }
  .score { text-align:right; font-variant-numeric:tabular-nums; color:var(--muted); }
  .hint { color:var(--muted); font-size:13px; margin:10px 0 0; }
  #panels { display:grid; gap:10px 12px; align-items:center; }
  #panels .col-title { font-weight:700; font-size:13px; text-align:center; color:var(--muted); }
  #panels .row-title { font-weight:700; text-align:right; padding-right:4px; }
  #panels .row-title span { display:block; font-weight:400; color:var(--muted); font-variant-numeric:tabular-nums; }
  figure { margin:0; position:relative; }
  figure img.panel { width:100%; display:block; border-radius:8px; }
  figure figcaption { position:absolute; right:6px; bottom:6px; font-size:11px; color:#fff;
                      background:rgba(0,0,0,.55); padding:1px 6px; border-radius:4px; }
  .legend { display:flex; align-items:center; gap:8px; margin-top:14px; color:var(--muted); font-size:12px; }
  .legend .ramp { flex:0 1 260px; height:10px; border-radius:5px;
    background:linear-gradient(90deg,#30123b,#4686fb,#1be5b5,#a4fc3c,#fbb938,#e4460a,#7a0403); }
  .empty { color:var(--muted); }
</style>
</head>
<body>
<header>
  <h1>MSRN · multi-label tagging</h1>
  <p id="model-info">Loading model…</p>
</header>
<main>
  <section class="card">
    <h2>Image</h2>
    <label id="drop" for="file">
      <strong>Drop an image here</strong>
      <span>or click to choose a file</span>
    </label>
    <input id="file" type="file" accept="image/*">
    <img id="preview" alt="the uploaded image">
    <div id="status" role="status"></div>
  </section>
  <section>
    <div class="card">
      <h2>Labels</h2>
      <div id="tags" class="tags"><span class="none">No image yet.</span></div>
      <div id="labels"></div>
      <p class="hint">Bars show each label's probability; the tick marks its threshold. Labels at or above it
        are reported.</p>
    </div>
    <div class="card" style="margin-top:22px">
      <h2>Where the model looked</h2>
      <div id="panels"><span class="empty">Attention of the top labels at the three depths appears here.</span></div>
      <div class="legend" id="legend" hidden><span>least attention</span><span class="ramp"></span>
        <span>most (each panel scaled to its own range)</span></div>
    </div>
  </section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; };

fetch("api/info").then(r => r.json()).then(info => {
  $("model-info").textContent = `${info.labels.length} labels · input ${info.image_size}×${info.image_size}` +
    (info.explain ? " · label-guided attention at three depths" : " · baseline model (no attention maps)");
}).catch(() => { $("model-info").textContent = "Model info unavailable."; });

function setStatus(text, isError) { const s = $("status"); s.textContent = text;
  s.className = isError ? "error" : ""; }

function renderLabels(data) {
  const tags = $("tags"); tags.replaceChildren();
  if (!data.record.labels.length) tags.append(el("span", "none", "No label reaches its threshold."));
  for (const l of data.record.labels) tags.append(el("span", "tag", `${l.label} ${l.score.toFixed(2)}`));
  const list = $("labels"); list.replaceChildren();
  for (const s of data.scores) {
    const row = el("div", "label-row" + (s.reported ? " on" : ""));
    const name = el("span", "name", s.label); name.title = s.label;
    const bar = el("div", "bar"); const fill = el("div", "fill"); fill.style.width = (100 * s.score) + "%";
    const thr = el("div", "thr"); thr.style.left = `calc(${100 * s.threshold}% - 1px)`;
    thr.title = `threshold ${s.threshold}`; bar.append(fill, thr);
    row.append(name, bar, el("span", "score", s.score.toFixed(3))); list.append(row);
  }
}

function renderPanels(data) {
  const grid = $("panels"); grid.replaceChildren();
  if (!data.panels.length) {
    grid.append(el("span", "empty", "This model has no label-guided attention to show."));
    $("legend").hidden = true; return;
  }
  grid.style.gridTemplateColumns = `minmax(80px,130px) repeat(${data.depths.length}, minmax(0,1fr))`;
  grid.append(el("span"));
  for (const d of data.depths) grid.append(el("div", "col-title", d));
  for (const p of data.panels) {
    const title = el("div", "row-title", p.label); title.append(el("span", "", p.score.toFixed(3)));
    grid.append(title);
    p.images.forEach((b64, i) => {
      const fig = el("figure"); const img = el("img", "panel");
      img.src = "data:image/png;base64," + b64;
      img.alt = `attention for ${p.label}, ${data.depths[i]}`;
      fig.append(img, el("figcaption", "", `peak ${p.peaks[i].toFixed(1)}× uniform`)); grid.append(fig);
    });
  }
  $("legend").hidden = false;
}

async function send(file) {
  if (!file) return;
  const prev = $("preview"); prev.src = URL.createObjectURL(file); prev.style.display = "block";
  setStatus(`Analysing ${file.name}…`);
  const form = new FormData(); form.append("image", file);
  try {
    const r = await fetch("api/predict", { method: "POST", body: form });
    const data = await r.json();
    if (!r.ok) { setStatus(data.error || `request failed (${r.status})`, true); return; }
    renderLabels(data); renderPanels(data);
    setStatus(`${data.record.image}: ${data.record.labels.length} label(s) reported.`);
  } catch (e) { setStatus("The server did not answer: " + e, true); }
}

$("file").addEventListener("change", () => send($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over");
  send(e.dataTransfer.files[0]); });
</script>
</body>
</html>
"""
