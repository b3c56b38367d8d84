// Drawing: the canvas and the AoP-over-time plot are functions of the page's state (app.js).
// Image pixels map to canvas (CSS) pixels by state.view: screen = image * scale + (x, y).

import {aopDeg} from './aop.js';

export const NAMES = ['PS1', 'PS2', 'FH1'];
const COLORS = ['#ff5a5f', '#ffb020', '#35d0ff'];
const SYMPHYSIS = '#ffd84a';
const TANGENT = '#35d0ff';
const FLAG = '#ff8c1a';

/** Canvas (CSS pixel) position of an image point under state.view. */
export function toScreen(view, p) {
  return [p[0] * view.scale + view.x, p[1] * view.scale + view.y];
}

/** Image position of a canvas (CSS pixel) point under state.view. */
export function toImage(view, s) {
  return [(s[0] - view.x) / view.scale, (s[1] - view.y) / view.scale];
}

/** The view that fits an image of `width` x `height` in the canvas, centred. */
export function fitView(canvas, width, height) {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const scale = Math.min(w / width, h / height) * 0.96;
  return {scale, x: (w - width * scale) / 2, y: (h - height * scale) / 2};
}

function sizeCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

function line(ctx, a, b, color, width, dash = []) {
  ctx.save();
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.setLineDash(dash);
  ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
  ctx.restore();
}

function drawArc(ctx, s, aop) {
  const [p1, p2, f1] = s;
  const a1 = Math.atan2(p2[1] - p1[1], p2[0] - p1[0]);
  const a2 = Math.atan2(f1[1] - p1[1], f1[0] - p1[0]);
  const shortest = Math.min(Math.hypot(p2[0] - p1[0], p2[1] - p1[1]),
                            Math.hypot(f1[0] - p1[0], f1[1] - p1[1]));
  const r = Math.max(16, Math.min(70, 0.35 * shortest));
  const sweep = ((a2 - a1) % (2 * Math.PI) + 2 * Math.PI) % (2 * Math.PI);
  ctx.save();
  ctx.strokeStyle = '#ffffff'; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.arc(p1[0], p1[1], r, a1, a2, sweep > Math.PI); ctx.stroke();
  const mid = a1 + (sweep > Math.PI ? sweep - 2 * Math.PI : sweep) / 2;
  ctx.fillStyle = '#ffffff'; ctx.font = 'bold 14px system-ui, sans-serif';
  ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
  if (Number.isFinite(aop)) {
    ctx.fillText(`${aop.toFixed(1)}°`, p1[0] + (r + 22) * Math.cos(mid),
                 p1[1] + (r + 22) * Math.sin(mid));
  }
  ctx.restore();
}

function drawPoints(ctx, s, hover) {
  s.forEach((p, i) => {
    ctx.save();
    ctx.fillStyle = COLORS[i]; ctx.strokeStyle = '#000'; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.arc(p[0], p[1], i === hover ? 8 : 6, 0, 2 * Math.PI);
    ctx.fill(); ctx.stroke();
    ctx.font = 'bold 13px system-ui, sans-serif'; ctx.fillStyle = COLORS[i];
    ctx.strokeStyle = '#000'; ctx.lineWidth = 3;
    ctx.strokeText(NAMES[i], p[0] + 10, p[1] - 10); ctx.fillText(NAMES[i], p[0] + 10, p[1] - 10);
    ctx.restore();
  });
}

function drawModelPoints(ctx, s) {
  ctx.save();
  ctx.strokeStyle = 'rgba(255,255,255,0.7)'; ctx.lineWidth = 1.5;
  for (const p of s) {
    ctx.beginPath();
    ctx.moveTo(p[0] - 5, p[1] - 5); ctx.lineTo(p[0] + 5, p[1] + 5);
    ctx.moveTo(p[0] + 5, p[1] - 5); ctx.lineTo(p[0] - 5, p[1] + 5); ctx.stroke();
  }
  ctx.restore();
}

/** Draws the current frame: image, symphysis line, tangent line, AoP arc, landmarks. */
export function drawCanvas(canvas, state, entry) {
  const ctx = sizeCanvas(canvas);
  ctx.fillStyle = '#111'; ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  if (!entry || !entry.bitmap) return false;
  const v = state.view;
  ctx.imageSmoothingEnabled = v.scale < 4;
  // The bitmap may be a reduced copy of a huge still; points are in its stored pixels (size).
  ctx.drawImage(entry.bitmap, v.x, v.y, entry.size[0] * v.scale, entry.size[1] * v.scale);
  if (!entry.points) return false;
  const s = entry.points.map((p) => toScreen(v, p));
  if (entry.corrected && entry.result) {
    drawModelPoints(ctx, entry.result.landmarks.map((p) => toScreen(v, p)));
  }
  line(ctx, s[0], s[1], SYMPHYSIS, 2);
  const far = [s[0][0] + 1.3 * (s[2][0] - s[0][0]), s[0][1] + 1.3 * (s[2][1] - s[0][1])];
  line(ctx, s[0], far, TANGENT, 2, [7, 5]);
  drawArc(ctx, s, aopDeg(entry.points));
  drawPoints(ctx, s, state.hover);
  return true;
}

const PLOT_PAD = {left: 38, right: 10, top: 10, bottom: 20};

function plotScale(canvas, rows) {
  const finite = rows.flatMap((r) => [r.aop_deg, r.aop_low_deg, r.aop_high_deg])
      .filter(Number.isFinite);
  let lo = Math.min(...finite, 60), hi = Math.max(...finite, 160);
  lo = Math.floor(lo / 10) * 10; hi = Math.ceil(hi / 10) * 10;
  const w = canvas.clientWidth - PLOT_PAD.left - PLOT_PAD.right;
  const h = canvas.clientHeight - PLOT_PAD.top - PLOT_PAD.bottom;
  const n = Math.max(1, rows.length - 1);
  return {x: (i) => PLOT_PAD.left + (i / n) * w,
          y: (deg) => PLOT_PAD.top + (1 - (deg - lo) / (hi - lo)) * h, lo, hi, n, w};
}

/** Frame index nearest to a click at canvas x (CSS pixels), or -1. */
export function plotFrameAt(canvas, rows, x) {
  if (!rows || !rows.length) return -1;
  const sc = plotScale(canvas, rows);
  const i = Math.round(((x - PLOT_PAD.left) / sc.w) * sc.n);
  return rows[Math.max(0, Math.min(rows.length - 1, i))].index;
}

/** The band of the frames' 90 % intervals (`aop_low_deg`..`aop_high_deg`) where rows have them. */
function drawBand(ctx, rows, sc) {
  const band = rows.map((r, i) => [sc.x(i), r.aop_low_deg, r.aop_high_deg])
      .filter(([, lo, hi]) => Number.isFinite(lo) && Number.isFinite(hi));
  if (!band.length) return;
  ctx.fillStyle = 'rgba(138, 180, 255, 0.18)'; ctx.beginPath();
  band.forEach(([x, lo]) => ctx.lineTo(x, sc.y(lo)));
  band.reverse().forEach(([x, , hi]) => ctx.lineTo(x, sc.y(hi)));
  ctx.closePath(); ctx.fill();
}

/** AoP over time of a clip: a point per frame over the band of its 90 % intervals, flagged frames
 * in orange, saved frames ringed. Returns the points drawn: {index, x, y, flagged} in canvas
 * (CSS) pixels. */
export function drawPlot(canvas, rows, frame) {
  const ctx = sizeCanvas(canvas);
  const w = canvas.clientWidth, h = canvas.clientHeight;
  ctx.fillStyle = '#1b1b1b'; ctx.fillRect(0, 0, w, h);
  if (!rows || !rows.length) return [];
  const sc = plotScale(canvas, rows);
  ctx.font = '11px system-ui, sans-serif'; ctx.fillStyle = '#999';
  ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  for (let deg = sc.lo; deg <= sc.hi; deg += 20) {
    ctx.fillText(`${deg}°`, PLOT_PAD.left - 4, sc.y(deg));
    line(ctx, [PLOT_PAD.left, sc.y(deg)], [w - PLOT_PAD.right, sc.y(deg)], '#333', 1);
  }
  const at = rows.findIndex((r) => r.index === frame);
  drawBand(ctx, rows, sc);
  if (at >= 0) line(ctx, [sc.x(at), PLOT_PAD.top], [sc.x(at), h - PLOT_PAD.bottom], '#fff', 1);
  ctx.strokeStyle = '#8ab4ff'; ctx.lineWidth = 1; ctx.beginPath();
  rows.forEach((r, i) => {
    if (Number.isFinite(r.aop_deg)) ctx.lineTo(sc.x(i), sc.y(r.aop_deg));
  });
  ctx.stroke();
  const drawn = [];
  rows.forEach((r, i) => {
    if (!Number.isFinite(r.aop_deg)) return;
    const [x, y] = [sc.x(i), sc.y(r.aop_deg)];
    ctx.fillStyle = r.low_confidence ? FLAG : '#8ab4ff';
    ctx.beginPath(); ctx.arc(x, y, r.low_confidence ? 3.5 : 2.5, 0, 7); ctx.fill();
    if (r.label) {
      ctx.strokeStyle = '#5fd35f'; ctx.beginPath(); ctx.arc(x, y, 5, 0, 7); ctx.stroke();
    }
    drawn.push({index: r.index, x, y, flagged: Boolean(r.low_confidence)});
  });
  return drawn;
}
