"""The viewer's local server: a Starlette app on uvicorn, a thin adapter over `Workspace`.

Routes (JSON unless said; errors are `{"error": "<what happened and what to do>"}`):

  GET  /                                 the page (static/index.html); GET /static/<name> its assets
  GET  /api/session                      model status, the corrections file, limits, opened items
  GET  /api/items                        the opened inputs
  POST /api/items?name=<file name>       a dropped file (the body: its bytes) -> the opened item
  GET  /api/items/<id>/frames/<i>.png    frame i as PNG (the pixels the model sees)
  GET  /api/items/<id>/frames/<i>        the model's result for frame i, with its saved label
  GET  /api/items/<id>/timeline          the results of every frame (a clip's AoP over time)
  GET  /api/queue                        every frame, most worth checking first
  GET  /api/labels, POST /api/labels     saved labels; save `{"item", "frame", "landmarks"}`
  GET  /v1/models/<name>                 TF Serving's model status
  POST /v1/models/<name>:predict         TF Serving's REST predict on encoded images (b64)

Guards (`Guard`, around everything): the Host header must name this server (127.0.0.1:PORT or
localhost:PORT; DNS rebinding); every request but the page and its assets (so every /api and /v1
call) must carry the token made at start (`X-Token` or `Authorization: Bearer` header, or
`?token=`), so other local users and other web pages cannot drive it; bodies over the limit get
413; files are served only from the static folder's own list and from inputs opened in this
session (by id, never by path).
"""

import base64
import binascii
import hmac
import json
import math
import os
import socket
import secrets
import sys
import threading
import traceback
from urllib import parse

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

from aop_tf import results
from aop_tf.viewer import labels as labels_lib
from aop_tf.viewer import workspace as workspace_lib

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
                 ".ico": "image/x-icon"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
MAX_JSON_BYTES = 1 << 20  # a label or a status request; images go to /api/items and :predict
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; script-src 'self'; "
     b"style-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
     b"form-action 'none'")]
SERVING_OUTPUTS = ("landmarks", "aop_deg", "confidence", "heatmaps")
SERVING_INPUT = "images"  # the input of the exported `serving_default` signature
PUBLIC_PATHS = ("/", "/index.html")  # and /static/*: the page loads without the token


def json_response(payload, status=200, allow_nan=False):
  """A JSON response; `allow_nan` writes NaN as TF Serving does (`NaN`), else NaN must be gone."""
  body = json.dumps(payload, allow_nan=allow_nan, separators=(",", ":"))
  return Response(body, status, media_type="application/json")


def error_response(message, status):
  return json_response({"error": str(message)}, status)


class BodyTooLarge(workspace_lib.ViewerError):
  """A request body over the limit, found while it arrives (no Content-Length)."""
  status = 413


class Guard:
  """ASGI middleware: Host check, token check (all but the page and its assets), body limit,
  security headers.

  Args:
    app: the ASGI app guarded.
    token: the session's token.
    hosts: accepted Host header values (`host:port`); None accepts any (a wildcard bind).
    max_body_bytes: larger request bodies get 413.
  """

  def __init__(self, app, token, hosts, max_body_bytes):
    self.app, self.token, self.hosts = app, token, hosts
    self.max_body_bytes = int(max_body_bytes)

  def _refusal(self, scope, headers):
    """`(status, message)` of a request refused before it reaches the app, or None."""
    host = headers.get(b"host", b"").decode("latin-1").lower()
    if self.hosts is not None and host not in self.hosts:
      return 400, (f"Host {host!r} refused: this viewer answers only to "
                   f"{' or '.join(sorted(self.hosts))} (a guard against DNS rebinding)")
    path = scope["path"]
    if not (path in PUBLIC_PATHS or path.startswith("/static/")):  # all else needs the token
      if not hmac.compare_digest(self._token_of(scope, headers).encode(), self.token.encode()):
        return 403, ("missing or wrong token: open the URL the viewer printed at start "
                     "(http://127.0.0.1:PORT/?token=...), or send its token as the X-Token "
                     "header or ?token=")
    length = headers.get(b"content-length", b"0").decode("latin-1").strip() or "0"
    if not length.isdigit():
      return 400, f"bad Content-Length {length!r}"
    if int(length) > self.max_body_bytes:
      return 413, self._too_large_message(int(length))
    return None

  def _too_large_message(self, length=None):
    size = f"{length / 2**20:.1f} MiB" if length else "the body"
    return (f"{size} is over the upload limit of {self.max_body_bytes / 2**20:.1f} MiB; restart "
            "the viewer with a larger --max_upload_mb, or open the file with --inputs")

  @staticmethod
  def _token_of(scope, headers):
    token = headers.get(b"x-token", b"").decode("latin-1")
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if not token and auth.lower().startswith("bearer "):
      token = auth[7:].strip()
    if not token:
      query = parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
      token = (query.get("token") or [""])[0]
    return token

  async def __call__(self, scope, receive, send):
    if scope["type"] == "websocket":  # none are offered: closed before the handshake
      await send({"type": "websocket.close", "code": 1008})
      return
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return
    started = False

    async def send_guarded(message):
      nonlocal started
      if message["type"] == "http.response.start":
        started = True
        message = dict(message, headers=list(message.get("headers", [])) + SECURITY_HEADERS)
      await send(message)

    refusal = self._refusal(scope, dict(scope["headers"]))
    if refusal is not None:
      await error_response(refusal[1], refusal[0])(scope, receive, send_guarded)
      return
    received = 0

    async def receive_counted():
      nonlocal received
      message = await receive()
      received += len(message.get("body", b""))
      if received > self.max_body_bytes:
        raise BodyTooLarge(self._too_large_message())
      return message

    try:
      await self.app(scope, receive_counted, send_guarded)
    except BodyTooLarge:  # raised outside a route (the routes' errors become responses there)
      if not started:
        await error_response(self._too_large_message(), 413)(scope, receive, send_guarded)


def static_files(folder=STATIC_DIR):
  """{name: path} of the page's own files (regular files, no links, known types): the only
  files served by name."""
  return {name: os.path.join(folder, name) for name in os.listdir(folder)
          if os.path.splitext(name)[1] in CONTENT_TYPES
          and os.path.isfile(os.path.join(folder, name))
          and not os.path.islink(os.path.join(folder, name))}


async def _json_body(request, limit=MAX_JSON_BYTES):
  """The request's JSON object; ViewerError (400) for anything else."""
  body = await request.body()
  if len(body) > limit:
    raise workspace_lib.ViewerError(f"the JSON body is over {limit} bytes")
  try:
    payload = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise workspace_lib.ViewerError(f"the body is not JSON ({e}); send a JSON object") from None
  if not isinstance(payload, dict):
    raise workspace_lib.ViewerError(f"expected a JSON object, got {type(payload).__name__}")
  return payload


def _int(value, what):
  try:
    return int(value)
  except (TypeError, ValueError):
    raise workspace_lib.ViewerError(f"{what} must be an integer, got {value!r}") from None


# ------------------------------------------------------------------------------------------------
# TF Serving's REST face (https://www.tensorflow.org/tfx/serving/api_rest): the bytes signature.

def _b64_of(value, where):
  """The bytes of one `{"b64": ...}` value (or `{"images": {"b64": ...}}`, the named form)."""
  if isinstance(value, dict) and set(value) == {SERVING_INPUT}:
    value = value[SERVING_INPUT]
  if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
    raise workspace_lib.ViewerError(
        f"{where}: expected {{\"b64\": \"<base64 of an encoded image>\"}} or "
        f"{{\"{SERVING_INPUT}\": {{\"b64\": ...}}}}; got {json.dumps(value)[:80]}")
  try:
    return base64.b64decode(value["b64"], validate=True)
  except (binascii.Error, ValueError) as e:
    raise workspace_lib.ViewerError(f"{where}: 'b64' is not valid base64 ({e})") from None


def parse_predict_body(payload):
  """`(blobs, columnar)` of a TF Serving predict body: `instances` (row format) or `inputs`
  (columnar: a list, or `{"images": [...]}`); ViewerError for anything else."""
  signature = payload.get("signature_name", "serving_default")
  if signature != "serving_default":
    raise workspace_lib.ViewerError(
        f"signature_name {signature!r}: this server offers only 'serving_default' (encoded "
        f"image bytes as {{\"b64\": ...}}, input {SERVING_INPUT!r})")
  if ("instances" in payload) == ("inputs" in payload):
    raise workspace_lib.ViewerError("the body needs exactly one of 'instances' (row format) or "
                                    "'inputs' (columnar format)")
  columnar = "inputs" in payload
  values = payload["inputs"] if columnar else payload["instances"]
  if columnar and isinstance(values, dict) and set(values) == {SERVING_INPUT}:
    values = values[SERVING_INPUT]
  if columnar and isinstance(values, dict):
    values = [values]
  if not isinstance(values, list):
    raise workspace_lib.ViewerError("'instances' must be a list of {\"b64\": ...} values")
  return [_b64_of(v, f"instance {i}") for i, v in enumerate(values)], columnar


def predict_response(outputs, columnar):
  """TF Serving's answer: `{"predictions": [{output: value}, ...]}` (row format) or
  `{"outputs": {output: [...]}}`; an ensemble's `aop_spread_deg` joins the outputs."""
  keys = list(SERVING_OUTPUTS)
  spread = outputs.get("aop_spread_deg")
  if spread is not None and len(spread) and any(math.isfinite(float(s)) for s in spread):
    keys.append("aop_spread_deg")
  if columnar:
    return {"outputs": {k: outputs[k].tolist() for k in keys}}
  count = len(outputs["aop_deg"])
  return {"predictions": [{k: outputs[k][i].tolist() for k in keys} for i in range(count)]}


def _parse_model_path(rest):
  """`(name, version, verb)` of `/v1/models/<rest>`: `name[/versions/N|/labels/L][:verb]`."""
  verb = None
  if ":" in rest:
    rest, verb = rest.rsplit(":", 1)
  parts = rest.split("/")
  version = None
  if len(parts) == 3 and parts[1] in ("versions", "labels"):
    version = parts[2]
  elif len(parts) != 1:
    raise workspace_lib.NotFound(f"unknown path /v1/models/{rest}; use /v1/models/<name> or "
                                 "/v1/models/<name>:predict")
  return parts[0], version, verb


# ------------------------------------------------------------------------------------------------
# The routes.

class Api:
  """The route handlers of one session. Work on files and the model runs on worker threads."""

  def __init__(self, workspace, model_name, max_body_bytes, static_dir=STATIC_DIR):
    self.workspace = workspace
    self.model_name = model_name
    self.max_body_bytes = max_body_bytes
    self.static = static_files(static_dir)

  def routes(self):
    return [
        Route("/", self.page), Route("/index.html", self.page),
        Route("/static/{name}", self.asset),
        Route("/api/session", self.session), Route("/api/items", self.items),
        Route("/api/items", self.open_upload, methods=["POST"]),
        Route("/api/items/{item}/frames/{index:int}.png", self.frame_png),
        Route("/api/items/{item}/frames/{index:int}", self.frame_result),
        Route("/api/items/{item}/timeline", self.timeline), Route("/api/queue", self.queue),
        Route("/api/labels", self.labels), Route("/api/labels", self.save, methods=["POST"]),
        Route("/v1/models/{rest:path}", self.serving, methods=["GET", "POST"])]

  def _file(self, name):
    path = self.static.get(name)
    if path is None:
      raise workspace_lib.NotFound(f"no page asset {name!r}")
    with open(path, "rb") as f:
      return Response(f.read(), media_type=CONTENT_TYPES[os.path.splitext(name)[1]])

  async def page(self, request):
    return self._file("index.html")

  async def asset(self, request):
    return self._file(request.path_params["name"])

  async def session(self, request):
    store = self.workspace.store
    return json_response(results.json_safe({
        "model": dict(self.workspace.model.status(), name=self.model_name),
        "labels": {"path": store.path, "count": len(store), "image_dir": store.image_dir},
        "max_upload_bytes": self.max_body_bytes, "problems": self.workspace.problems,
        "opening": self.workspace.opening.is_set(),
        "items": [item.describe() for item in self.workspace.items()]}))

  async def items(self, request):
    return json_response([item.describe() for item in self.workspace.items()])

  async def open_upload(self, request):
    name = request.query_params.get("name", "")
    data = await request.body()
    if not data:
      raise workspace_lib.ViewerError("empty upload: send the file's bytes as the body")
    item = await run_in_threadpool(self.workspace.open_upload, name, data)
    return json_response(item.describe(), 201)

  async def frame_png(self, request):
    params = request.path_params
    png = await run_in_threadpool(self.workspace.frame_png, params["item"], params["index"])
    return Response(png, media_type="image/png")

  async def frame_result(self, request):
    params = request.path_params
    return json_response(await run_in_threadpool(self.workspace.result, params["item"],
                                                 params["index"]))

  async def timeline(self, request):
    return json_response(await run_in_threadpool(self.workspace.timeline,
                                                 request.path_params["item"]))

  async def queue(self, request):
    return json_response(await run_in_threadpool(self.workspace.queue))

  async def labels(self, request):
    return json_response(results.json_safe(
        [label.as_json() for label in self.workspace.store.all()]))

  async def save(self, request):
    payload = await _json_body(request)
    for key in ("item", "frame", "landmarks"):
      if key not in payload:
        raise workspace_lib.ViewerError(f"missing {key!r}; send {{\"item\": id, \"frame\": i, "
                                        "\"landmarks\": [[x, y], [x, y], [x, y]]}")
    label = await run_in_threadpool(self.workspace.save, str(payload["item"]),
                                    _int(payload["frame"], "frame"), payload["landmarks"])
    return json_response(label)

  async def serving(self, request):
    name, _, verb = _parse_model_path(request.path_params["rest"])
    if name != self.model_name:
      raise workspace_lib.NotFound(f"no model {name!r} here; this server serves "
                                   f"{self.model_name!r}")
    if request.method == "GET" and verb is None:
      return json_response(self._serving_status())
    if request.method != "POST" or verb != "predict":
      raise workspace_lib.ViewerError(f"use POST /v1/models/{name}:predict (got "
                                      f"{request.method} {verb or 'no verb'})")
    payload = await _json_body(request, self.max_body_bytes)
    blobs, columnar = parse_predict_body(payload)
    if not blobs:
      return json_response({"outputs": {}} if columnar else {"predictions": []})
    outputs = await run_in_threadpool(self.workspace.predict_encoded, blobs)
    return json_response(predict_response(outputs, columnar), allow_nan=True)

  def _serving_status(self):
    status = self.workspace.model.status()
    state = {"loading": "LOADING", "ready": "AVAILABLE", "failed": "END"}[status["state"]]
    code = "UNKNOWN" if status["state"] == "failed" else "OK"
    return {"model_version_status": [{"version": "1", "state": state, "status": {
        "error_code": code, "error_message": status["error"] or ""}}]}


async def _viewer_error(request, error):
  return error_response(error, getattr(error, "status", 400))


async def _http_error(request, error):
  messages = {404: f"nothing at {request.url.path}; the page is at /, the API under /api/",
              405: f"{request.method} is not allowed on {request.url.path}"}
  return error_response(messages.get(error.status_code, error.detail), error.status_code)


async def _server_error(request, error):
  traceback.print_exception(error, file=sys.stderr)
  return error_response(f"internal error ({type(error).__name__}: {error}); the viewer keeps "
                        "running, please report this", 500)


def make_app(workspace, token, hosts, model_name, max_body_bytes):
  """The guarded ASGI app of a `Workspace` (see the module docstring)."""
  api = Api(workspace, model_name, max_body_bytes)
  app = Starlette(routes=api.routes(), exception_handlers={
      workspace_lib.ViewerError: _viewer_error, HTTPException: _http_error,
      Exception: _server_error})
  return Guard(app, token, hosts, max_body_bytes)


def accepted_hosts(host, port):
  """Host header values this server answers to; None (any) for a wildcard bind."""
  if host in WILDCARD:
    return None
  names = set(LOOPBACK) | {host}
  return {f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names}


def default_model_name(ref):
  """The name `/v1/models/<name>` answers to: a shipped model's name, else the folder's or
  file's stem."""
  path = os.path.normpath(str(ref))
  if os.path.basename(path) == "model.tflite":
    path = os.path.dirname(path)
  return os.path.splitext(os.path.basename(path))[0] or "model"


# ------------------------------------------------------------------------------------------------
# One viewer: socket, session, server.

def _listening_socket(host, port):
  """A TCP socket bound to (host, port) and listening (connections wait in the backlog until
  uvicorn accepts them)."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(128)
  except OSError:
    sock.close()
    raise
  return sock


class Viewer:
  """A viewer session bound to a socket: `url`, then `serve_forever()` or `start()` / `stop()`.

  Args:
    model: any `--model` form (see `workspace.Model`).
    inputs: `--inputs` values opened at start.
    clip_dirs: a folder of numbered frames among `inputs` is one clip.
    labels: the corrections CSV (`labels.LabelStore`; read back if it exists).
    host, port: where to listen (port 0: a free one).
    max_upload_mb: larger request bodies get 413.
    min_confidence: the flag threshold (None: the model card's).
    name: the model's name under /v1/models/ (default `default_model_name(model)`).
    token: the session token (default: a new random one).
    load_kwargs: passed to `predictor.load`.
  """

  def __init__(self, model, inputs=(), labels="corrections.csv", host="127.0.0.1", port=0,
               max_upload_mb=512, min_confidence=None, name=None, token=None, clip_dirs=False,
               **load_kwargs):
    self.host = host
    self.token = token or secrets.token_urlsafe(24)
    store = labels_lib.LabelStore(labels)
    try:
      self.socket = _listening_socket(host, port)
    except OSError as e:
      store.close()
      raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}); pick another "
                    "--port, or 0 for a free one") from None
    self.port = self.socket.getsockname()[1]
    self.model = workspace_lib.Model(model, min_confidence, **load_kwargs).start()
    self.workspace = workspace_lib.Workspace(self.model, store)
    self.inputs, self.clip_dirs = list(inputs or ()), clip_dirs
    self.app = make_app(self.workspace, self.token, accepted_hosts(host, self.port),
                        name or default_model_name(model), int(max_upload_mb * 2**20))
    self._server = None
    self._thread = None

  @property
  def url(self):
    """The page's address with the token."""
    host = "127.0.0.1" if self.host in WILDCARD else self.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{self.port}/?token={self.token}"

  def open_inputs(self, on_done=None):
    """Opens the `inputs` on a thread (`Workspace.open_inputs_in_background`); returns self."""
    self.workspace.open_inputs_in_background(self.inputs, self.clip_dirs, on_done)
    return self

  def _make_server(self):
    config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                            server_header=False, date_header=False)
    self._server = uvicorn.Server(config)
    return self._server

  def serve_forever(self):
    """Serves until Ctrl-C (or SIGTERM); then closes the session."""
    try:
      self._make_server().run(sockets=[self.socket])
    finally:
      self.close()

  def start(self, wait_inputs=True):
    """Serves on a daemon thread (tests, benchmarks); returns self once it accepts requests (and,
    with `wait_inputs`, once the inputs are open)."""
    self.open_inputs()
    if wait_inputs:
      while self.workspace.opening.is_set():
        threading.Event().wait(0.01)
    server = self._make_server()
    self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self.socket]},
                                    name="viewer-server", daemon=True)
    self._thread.start()
    while not server.started and self._thread.is_alive():
      threading.Event().wait(0.01)
    return self

  def stop(self):
    """Stops a `start`ed server and closes the session."""
    if self._server is not None:
      self._server.should_exit = True
    if self._thread is not None:
      self._thread.join(timeout=10)
    self.close()

  def close(self):
    self.workspace.close()
    self.socket.close()
