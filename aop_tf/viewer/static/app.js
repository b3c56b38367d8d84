// The viewer page: one state object, actions that change it, and render() = f(state).
//
// Landmarks are [x, y] in pixels of the frame shown (PS1, PS2, FH1); the AoP shown is always
// aopDeg(points) (aop.js), so dragging a landmark updates it live. Nothing leaves this machine:
// every request goes to the page's own server (api.js).

import {aopDeg} from './aop.js';
import {api} from './api.js';
import {NAMES, drawCanvas, drawPlot, fitView, plotFrameAt, toImage, toScreen} from './draw.js';

const $ = (id) => document.getElementById(id);
const canvas = $('view');
const plot = $('plot');
const GRAB_PX = 12;  // a press this close to a landmark grabs it

const state = {
  session: null,          // GET /api/session
  items: [],              // opened inputs (server's describe())
  itemId: null,           // what is shown
  frame: 0,
  frames: new Map(),      // `${item}#${frame}` -> {bitmap, result, points, label, corrected, dirty}
  timelines: new Map(),   // item id -> rows of every frame (clips)
  queue: [],              // GET /api/queue, most worth checking first
  undo: [],               // {key, points, corrected} before each change
  view: {scale: 1, x: 0, y: 0},
  fittedItem: null,
  drag: null,             // {kind: 'point', index, moved} | {kind: 'pan', from, view}
  hover: -1,
  message: '',
  error: false,
  drawnKeys: new Set(),   // frames whose landmarks have been drawn once (timing events)
  plotPoints: [],         // the AoP-over-time points drawn: {index, x, y, flagged}
};

const keyOf = (item, frame) => `${item}#${frame}`;
const currentKey = () => keyOf(state.itemId, state.frame);
const currentEntry = () => state.frames.get(currentKey());
const itemById = (id) => state.items.find((it) => it.id === id);
const copyPoints = (points) => points.map((p) => [p[0], p[1]]);
const fmt = (v, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : '–');

function say(message, error = false) {
  state.message = message; state.error = error; render();
}

// ---------------------------------------------------------------------------------------------
// Rendering.

function render() {
  const entry = currentEntry();
  const drawn = drawCanvas(canvas, state, entry);
  if (drawn && !state.drawnKeys.has(currentKey())) {
    state.drawnKeys.add(currentKey());
    window.dispatchEvent(new CustomEvent('aop:drawn', {detail: {key: currentKey()}}));
  }
  $('drop-hint').hidden = state.items.length > 0;
  renderHeader();
  renderReadout(entry);
  renderClip();
  renderQueue();
}

function renderHeader() {
  const model = state.session && state.session.model;
  $('model-status').textContent = !model ? '' : model.state === 'ready' ?
    `model ${model.name} (${model.kind})` : model.state === 'loading' ?
    `model ${model.name} loading…` : `model failed: ${model.error}`;
  $('message').textContent = state.message;
  $('message').className = state.error ? 'error' : '';
}

function renderReadout(entry) {
  const item = itemById(state.itemId);
  $('name').textContent = !item ? 'No image open' :
    item.is_clip ? `${item.name} — frame ${state.frame}` : item.name;
  const result = entry && entry.result;
  const points = entry && entry.points;
  const aop = points ? aopDeg(points) : NaN;
  $('aop').textContent = points ? `AoP ${fmt(aop)}°` : '';
  const quality = state.session && state.session.model.quality;
  const interval = result && hasInterval(result);
  $('uncertainty').textContent = !result ? '' : entry.corrected ?
    `corrected; the model said ${modelAop(result, quality)}` : interval ?
    modelAop(result, quality) : Number.isFinite(result.aop_uncertainty_deg) ?
    `± ${fmt(result.aop_uncertainty_deg)}° (RMS error to expect)` : '';
  $('uncertainty').title = interval && quality && quality.chosen_on ?
    `interval calibrated on ${quality.chosen_on}` : '';
  $('interval-note').textContent = !interval ? '' :
    `the true AoP lies in this range for ${fmt(10 * coverageOf(quality), 0)} of 10 images like ` +
    'this one (calibrated on out-of-fold train predictions)';
  $('flag').textContent = !result ? '' : result.low_confidence ?
    `⚠ check this one: ${result.flag_reason}` :
    Number.isFinite(result.quality_score_deg) && quality ?
    `✓ confident (expected AoP error ${fmt(result.quality_score_deg)}° < ` +
    `${fmt(quality.flag_score_deg)}°)` : '✓ confident';
  $('flag').className = !result ? '' : result.low_confidence ? 'low' : 'ok';
  $('saved-state').textContent = !entry || !points ? '' : entry.dirty ? '● unsaved changes' :
    entry.label ? `✓ saved${entry.label.corrected ? ' (corrected)' : ''}` :
    'model landmarks, not saved yet';
  $('saved-state').className = !entry ? '' : entry.dirty ? 'dirty' : entry.label ? 'saved' : '';
  $('points').tBodies[0].replaceChildren(...(points || []).map((p, i) => {
    const row = document.createElement('tr');
    const peak = result ? result.confidence[i] : NaN;
    for (const text of [NAMES[i], fmt(p[0]), fmt(p[1]), fmt(peak, 2)]) {
      row.appendChild(document.createElement('td')).textContent = text;
    }
    return row;
  }));
  const labels = state.session && state.session.labels;
  $('labels-file').textContent = labels ?
    `${labels.count} saved in ${labels.path.split('/').pop()}` : '';
  $('labels-file').title = labels ? labels.path : '';
}

const hasInterval = (result) => Number.isFinite(result.aop_low_deg) &&
                                 Number.isFinite(result.aop_high_deg);
const coverageOf = (quality) => (quality && Number.isFinite(quality.coverage) ?
                                 quality.coverage : 0.9);

/** The model's AoP as `quality.describe_interval` writes it, e.g. "127.6° (90 %: 119–136)"
 * where the row has the card's interval, else "127.6° ± 7.4°". */
function modelAop(result, quality) {
  if (!hasInterval(result)) {
    return Number.isFinite(result.aop_uncertainty_deg) ?
      `${fmt(result.aop_deg)}° ± ${fmt(result.aop_uncertainty_deg)}°` : `${fmt(result.aop_deg)}°`;
  }
  return `${fmt(result.aop_deg)}° (${fmt(100 * coverageOf(quality), 0)} %: ` +
         `${fmt(result.aop_low_deg, 0)}–${fmt(result.aop_high_deg, 0)})`;
}

function renderClip() {
  const item = itemById(state.itemId);
  const isClip = Boolean(item && item.is_clip);
  $('clip').hidden = !isClip;
  if (!isClip) { state.plotPoints = []; return; }
  const rows = state.timelines.get(item.id);
  const last = rows ? rows.length - 1 : Math.max(0, item.n_frames - 1);
  $('scrubber').max = String(last);
  $('scrubber').value = String(state.frame);
  const pending = rows ? '' : ' (predicting…)';
  $('frame-label').textContent = `frame ${state.frame} / ${last}${pending}`;
  state.plotPoints = drawPlot(plot, rows, state.frame);
}

function renderQueue() {
  const list = $('queue');
  const items = state.queue.map((entry) => {
    const li = document.createElement('li');
    li.textContent = `${entry.name}  ${fmt(entry.aop_deg)}°`;
    li.classList.toggle('saved', entry.saved);
    li.classList.toggle('low', entry.low_confidence);
    li.classList.toggle('current', entry.item === state.itemId && entry.index === state.frame);
    li.onclick = () => select(entry.item, entry.index);
    return li;
  });
  list.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// Actions.

async function loadEntry(itemId, frame) {
  const key = keyOf(itemId, frame);
  if (state.frames.has(key)) return state.frames.get(key);
  const [bitmap, result] = await Promise.all([api.frameImage(itemId, frame),
                                              api.result(itemId, frame)]);
  const label = result.label;
  const entry = {bitmap, result, label, dirty: false, size: [result.width, result.height],
                 corrected: Boolean(label && label.corrected),
                 points: copyPoints(label ? label.landmarks : result.landmarks)};
  state.frames.set(key, entry);
  return entry;
}

/** Shows frame `frame` of item `itemId`. */
async function select(itemId, frame = 0) {
  state.itemId = itemId; state.frame = frame;
  render();
  let entry;
  try {
    entry = await loadEntry(itemId, frame);
  } catch (e) {
    say(`cannot show ${itemId}#${frame}: ${e.message}`, true);
    return;
  }
  if (state.itemId !== itemId || state.frame !== frame) return;  // moved on meanwhile
  if (state.fittedItem !== itemId) {
    state.view = fitView(canvas, entry.size[0], entry.size[1]);
    state.fittedItem = itemId;
  }
  render();
  const item = itemById(itemId);
  if (item && item.is_clip && !state.timelines.has(itemId)) loadTimeline(itemId);
}

async function loadTimeline(itemId) {
  state.timelines.set(itemId, null);
  try {
    state.timelines.set(itemId, await api.timeline(itemId));
  } catch (e) {
    state.timelines.delete(itemId);
    say(`no AoP-over-time plot: ${e.message}`, true);
    return;
  }
  render();
  refreshQueue();
}

async function refreshQueue() {
  try {
    state.queue = await api.queue();
  } catch (e) {
    say(`review queue: ${e.message}`, true);
    return;
  }
  render();
}

async function openFiles(files) {
  let first = null;
  for (const file of files) {
    say(`opening ${file.name}…`);
    try {
      const item = await api.open(file);
      if (!itemById(item.id)) state.items.push(item);
      first = first || item;
      say(`opened ${file.name}`);
    } catch (e) {
      say(`cannot open ${file.name}: ${e.message}`, true);
    }
  }
  if (first) {
    await select(first.id, 0);
    refreshQueue();
  }
}

function remember(entry) {
  state.undo.push({key: currentKey(), points: copyPoints(entry.points),
                   corrected: entry.corrected, dirty: entry.dirty});
}

function setPoint(entry, index, p) {
  const [width, height] = entry.size;
  entry.points[index] = [Math.min(Math.max(p[0], -0.5), width - 0.5),
                         Math.min(Math.max(p[1], -0.5), height - 0.5)];
  entry.corrected = entry.points.some((q, i) => q[0] !== entry.result.landmarks[i][0] ||
                                                q[1] !== entry.result.landmarks[i][1]);
  entry.dirty = true;
}

function undo() {
  const last = state.undo.pop();
  if (!last) { say('nothing to undo'); return; }
  const entry = state.frames.get(last.key);
  Object.assign(entry, {points: last.points, corrected: last.corrected, dirty: last.dirty});
  const [itemId, frame] = last.key.split('#');
  if (last.key !== currentKey()) select(itemId, Number(frame)); else render();
}

function reset() {
  const entry = currentEntry();
  if (!entry || !entry.result) return;
  remember(entry);
  entry.points = copyPoints(entry.result.landmarks);
  entry.corrected = false; entry.dirty = true;
  render();
}

async function accept() {
  const entry = currentEntry();
  if (!entry || !entry.points) return;
  const [itemId, frame] = [state.itemId, state.frame];
  try {
    const label = await api.save(itemId, frame, entry.points);
    if (!entry.label) state.session.labels.count += 1;
    Object.assign(entry, {label, dirty: false, corrected: label.corrected});
    const rows = state.timelines.get(itemId);
    const row = rows && rows.find((r) => r.index === frame);
    if (row) row.label = label;
    say(`saved ${label.filename}${label.corrected ? ' (corrected)' : ''}`);
  } catch (e) {
    say(`not saved: ${e.message}`, true);
    return;
  }
  await refreshQueue();
  const next = state.queue.find((q) => !q.saved);
  if (next) select(next.item, next.index);
}

function step(delta) {
  if (!state.queue.length) return;
  const at = state.queue.findIndex((q) => q.item === state.itemId && q.index === state.frame);
  const next = state.queue[Math.max(0, Math.min(state.queue.length - 1, at + delta))];
  select(next.item, next.index);
}

function stepFrame(delta) {
  const item = itemById(state.itemId);
  if (!item || !item.is_clip) return;
  const rows = state.timelines.get(item.id);
  const last = rows ? rows.length - 1 : item.n_frames - 1;
  select(item.id, Math.max(0, Math.min(last, state.frame + delta)));
}

// ---------------------------------------------------------------------------------------------
// Input: mouse, wheel, keys, files.

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

function nearestPoint(entry, s) {
  if (!entry || !entry.points) return -1;
  let best = -1, bestDist = GRAB_PX;
  entry.points.forEach((p, i) => {
    const q = toScreen(state.view, p);
    const d = Math.hypot(q[0] - s[0], q[1] - s[1]);
    if (d <= bestDist) { best = i; bestDist = d; }
  });
  return best;
}

canvas.addEventListener('pointerdown', (event) => {
  const entry = currentEntry();
  const s = canvasPoint(event);
  const index = nearestPoint(entry, s);
  canvas.setPointerCapture(event.pointerId);
  if (index >= 0) {
    remember(entry);
    state.drag = {kind: 'point', index, moved: false};
  } else {
    state.drag = {kind: 'pan', from: s, view: Object.assign({}, state.view)};
  }
});

canvas.addEventListener('pointermove', (event) => {
  const entry = currentEntry();
  const s = canvasPoint(event);
  const drag = state.drag;
  if (!drag) {
    const hover = nearestPoint(entry, s);
    if (hover !== state.hover) { state.hover = hover; render(); }
    return;
  }
  if (drag.kind === 'point') {
    setPoint(entry, drag.index, toImage(state.view, s));
    drag.moved = true;
  } else {
    state.view = Object.assign({}, drag.view, {x: drag.view.x + s[0] - drag.from[0],
                                               y: drag.view.y + s[1] - drag.from[1]});
  }
  render();
});

canvas.addEventListener('pointerup', () => {
  if (state.drag && state.drag.kind === 'point' && !state.drag.moved) state.undo.pop();
  state.drag = null;
  render();
});

canvas.addEventListener('wheel', (event) => {
  event.preventDefault();
  const s = canvasPoint(event);
  const factor = Math.exp(-event.deltaY * 0.0015);
  const v = state.view;
  const scale = Math.min(64, Math.max(0.05, v.scale * factor));
  const p = toImage(v, s);
  state.view = {scale, x: s[0] - p[0] * scale, y: s[1] - p[1] * scale};
  render();
}, {passive: false});

plot.addEventListener('click', (event) => {
  const rows = state.timelines.get(state.itemId);
  const frame = plotFrameAt(plot, rows, event.clientX - plot.getBoundingClientRect().left);
  if (frame >= 0) select(state.itemId, frame);
});

$('scrubber').addEventListener('input', (event) => {
  select(state.itemId, Number(event.target.value));
});

const KEYS = {
  j: () => step(1), ArrowRight: () => step(1), k: () => step(-1), ArrowLeft: () => step(-1),
  a: accept, Enter: accept, u: undo, r: reset, ',': () => stepFrame(-1), '.': () => stepFrame(1),
  0: () => { fitCurrent(); },
};

window.addEventListener('keydown', (event) => {
  if (event.target instanceof HTMLInputElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === 'z') {
    event.preventDefault(); undo(); return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const action = KEYS[event.key];
  if (action) { event.preventDefault(); action(); }
});

function fitCurrent() {
  const entry = currentEntry();
  if (entry && entry.size) state.view = fitView(canvas, entry.size[0], entry.size[1]);
  render();
}

$('picker').addEventListener('change', (event) => {
  openFiles([...event.target.files]);
  event.target.value = '';
});
window.addEventListener('dragover', (event) => {
  event.preventDefault(); document.body.classList.add('dragging');
});
window.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
window.addEventListener('drop', (event) => {
  event.preventDefault(); document.body.classList.remove('dragging');
  openFiles([...event.dataTransfer.files]);
});
$('accept').addEventListener('click', accept);
$('undo').addEventListener('click', undo);
$('reset').addEventListener('click', reset);
$('fit').addEventListener('click', fitCurrent);
window.addEventListener('resize', render);

// ---------------------------------------------------------------------------------------------
// Start.

function mergeItems(items) {
  for (const item of items) if (!itemById(item.id)) state.items.push(item);
}

/** While the model loads or the --inputs open, polls the session and shows what arrives. */
async function pollSession() {
  const busy = () => state.session.model.state === 'loading' || state.session.opening;
  while (busy()) {
    await new Promise((resolve) => setTimeout(resolve, 300));
    try { state.session = await api.session(); } catch (e) { break; }
    mergeItems(state.session.items);
    if (state.itemId === null && state.items.length) select(state.items[0].id, 0);
    render();
  }
  for (const problem of state.session.problems) say(problem, true);
}

async function start() {
  if (!api.hasToken()) {
    say('Open the address the viewer printed at start (it carries ?token=...).', true);
    return;
  }
  try {
    state.session = await api.session();
  } catch (e) {
    say(`cannot reach the viewer: ${e.message}`, true);
    return;
  }
  mergeItems(state.session.items);
  render();
  if (state.items.length) await select(state.items[0].id, 0);
  await pollSession();
  if (state.items.length) await refreshQueue();
}

// For tests and the benchmark: the state, and where a landmark is on the screen.
window.viewer = {
  state, aopDeg, currentEntry,
  screenOf: (index) => {
    const rect = canvas.getBoundingClientRect();
    const s = toScreen(state.view, currentEntry().points[index]);
    return [rect.left + s[0], rect.top + s[1]];
  },
  ready: start(),
};
