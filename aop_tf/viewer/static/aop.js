// The Angle of Progression: the page's one copy of aop_tf/geometry.py's formula.
//
// Points are [x, y] in image pixels (x right, y down). AoP is the angle at PS1 between PS1->PS2
// and PS1->FH1, in degrees in [0, 180], computed as atan2(|cross|, dot) (exact near 0 and 180
// degrees); NaN when PS1 coincides with PS2 or FH1. geometry.py computes in float32 (TensorFlow),
// this in float64, so the two agree to float32's resolution (1.5e-5 deg at 180 deg); the test
// tests/test_viewer_browser.py compares them on 1,000 random triples.

/** Angle at `vertex` between vertex->a and vertex->b, degrees; NaN if a ray has zero length. */
export function angleDeg(vertex, a, b) {
  const ux = a[0] - vertex[0], uy = a[1] - vertex[1];
  const vx = b[0] - vertex[0], vy = b[1] - vertex[1];
  if ((ux === 0 && uy === 0) || (vx === 0 && vy === 0)) return NaN;
  const cross = ux * vy - uy * vx;
  const dot = ux * vx + uy * vy;
  return Math.atan2(Math.abs(cross), dot) * (180 / Math.PI);
}

/** AoP of [PS1, PS2, FH1] ([x, y] each), degrees. */
export function aopDeg(landmarks) {
  const [ps1, ps2, fh1] = landmarks;
  return angleDeg(ps1, ps2, fh1);
}
