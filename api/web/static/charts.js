// Charts drawn as inline SVG: the objective of every trial with the best-so-far line, and per-epoch curves.
// One <path> holds all the dots, so 10,000 trials are one element, not 10,000.

import { formatValue, h } from "./dom.js";

// Sizes in the SVG's own units; the SVG scales to its box, so a small chart gets a small viewBox and
// its text stays readable.
const LARGE = { width: 720, height: 240, left: 60, right: 16, top: 14, bottom: 30 };
const SMALL = { width: 380, height: 170, left: 52, right: 10, top: 10, bottom: 28 };

/** About `count` round tick values covering [min, max]. */
export function ticks(min, max, count = 5) {
  if (!(max > min)) return [min];
  const rough = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const normalized = rough / magnitude;
  const step = (normalized < 1.5 ? 1 : normalized < 3 ? 2 : normalized < 7 ? 5 : 10) * magnitude;
  const values = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) {
    values.push(Number(value.toPrecision(12)));
  }
  return values;
}

function extent(values) {
  let min = Infinity;
  let max = -Infinity;
  for (const value of values) {
    if (value < min) min = value;
    if (value > max) max = value;
  }
  if (min === Infinity) return [0, 1];
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, max + pad];
  }
  const pad = (max - min) * 0.05;
  return [min - pad, max + pad];
}

function scale([d0, d1], [r0, r1]) {
  const factor = (r1 - r0) / (d1 - d0);
  return (value) => r0 + (value - d0) * factor;
}

function frame(size, xDomain, yDomain, { xLabel, yLabel }) {
  const { width, height, left, right, top, bottom } = size;
  const x = scale(xDomain, [left, width - right]);
  const y = scale(yDomain, [height - bottom, top]);
  const svg = h("svg:svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const axes = h("svg:g", { class: "axes" });
  for (const value of ticks(...yDomain, size === SMALL ? 4 : 5)) {
    axes.append(h("svg:line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid-line" }),
      h("svg:text", { x: left - 6, y: y(value), class: "tick y" }, formatValue(value)));
  }
  // Trials and epochs are whole numbers: no tick between them.
  for (const value of ticks(...xDomain, size === SMALL ? 5 : 8).filter(Number.isInteger)) {
    axes.append(h("svg:text", { x: x(value), y: height - bottom + 16, class: "tick x" }, formatValue(value)));
  }
  axes.append(h("svg:line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  if (xLabel) axes.append(h("svg:text", { x: width - right, y: height - 2, class: "label x" }, xLabel));
  if (yLabel) axes.append(h("svg:text", { x: 4, y: top - 3, class: "label y" }, yLabel));
  svg.append(axes);
  return { svg, x, y };
}

/** Where a mouse event falls in the chart's own coordinates. */
function pointer(svg, event) {
  const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
  return { x: point.x, y: point.y };
}

/**
 * The objective of each completed trial (x: its number in the sweep), with the best value so far as a step line.
 * @param {{metric: string, goal: "maximize"|"minimize", points: {trial_id: number, number: number, index: number, value: number|null}[]}} objective
 * @param {{bestTrialId?: number, onPick?: (trialId: number) => void}} options
 */
export function objectiveChart(objective, { bestTrialId, onPick } = {}) {
  const points = objective.points.filter((p) => p.value !== null && Number.isFinite(p.value));
  if (points.length === 0) return h("p", { class: "empty chart-empty" }, "No completed trials yet.");
  points.sort((a, b) => a.number - b.number);
  const better = objective.goal === "minimize" ? (a, b) => a < b : (a, b) => a > b;
  const xDomain = points.length === 1 ? [points[0].number - 1, points[0].number + 1]
    : [points[0].number, points[points.length - 1].number];
  const { svg, x, y } = frame(LARGE, xDomain, extent(points.map((p) => p.value)), { xLabel: "trial", yLabel: objective.metric });
  const { width, height, left, right, top, bottom } = LARGE;

  let dots = "";
  let line = "";
  let best = null;
  for (const point of points) {
    const px = x(point.number).toFixed(1);
    const py = y(point.value).toFixed(1);
    dots += `M${px},${py}h0`;
    if (best === null || better(point.value, best)) {
      best = point.value;
      line += line ? `H${px}V${py}` : `M${px},${py}`;
    }
  }
  line += `H${(width - right).toFixed(1)}`;
  // Smaller dots as they crowd, so 10,000 trials still show their spread rather than one blob.
  const dotSize = points.length > 2000 ? 2.5 : points.length > 300 ? 4 : 6;
  svg.append(h("svg:path", { d: line, class: "best-line" }), h("svg:path", { d: dots, class: "dots", "stroke-width": dotSize }));
  const bestPoint = points.find((p) => p.trial_id === bestTrialId);
  if (bestPoint) svg.append(h("svg:circle", { cx: x(bestPoint.number), cy: y(bestPoint.value), r: 6, class: "best-dot" }));

  // Hover shows the nearest trial (by number); a click opens it.
  const marker = h("svg:circle", { r: 5, class: "hover-dot", visibility: "hidden" });
  const label = h("svg:text", { class: "hover-label", visibility: "hidden" });
  const overlay = h("svg:rect", { x: left, y: top, width: width - left - right,
    height: height - top - bottom, class: "overlay" });
  svg.append(marker, label, overlay);
  const invert = scale([left, width - right], xDomain);
  const nearest = (event) => {
    const index = invert(pointer(svg, event).x);
    let low = 0;
    let high = points.length - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (points[middle].number < index) low = middle + 1;
      else high = middle;
    }
    if (low > 0 && Math.abs(points[low - 1].number - index) < Math.abs(points[low].number - index)) low -= 1;
    return points[low];
  };
  overlay.addEventListener("mousemove", (event) => {
    const point = nearest(event);
    const px = x(point.number);
    marker.setAttribute("cx", px);
    marker.setAttribute("cy", y(point.value));
    label.setAttribute("x", Math.min(px + 8, width - 150));
    label.setAttribute("y", top + 12);
    label.textContent = `trial ${point.number}: ${formatValue(point.value)}`;
    marker.setAttribute("visibility", "visible");
    label.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("mouseleave", () => {
    marker.setAttribute("visibility", "hidden");
    label.setAttribute("visibility", "hidden");
  });
  if (onPick) overlay.addEventListener("click", (event) => onPick(nearest(event).trial_id));
  svg.setAttribute("aria-label", `${objective.metric} of ${points.length} completed trials, best so far ${formatValue(best)}`);
  return svg;
}

/**
 * Per-epoch curves on one chart.
 * @param {string} title
 * @param {{name: string, points: [number, number][]}[]} series  [epoch, value] pairs
 * @param {{stoppedAt?: number, stoppedLabel?: string, lastEpoch?: number}} options  `stoppedAt`: the epoch after
 *   which the trial was stopped (pruned), marked by a dashed line with `stoppedLabel`; the axis then runs on to
 *   `lastEpoch`, the last one it would have trained, so that the curves visibly end early
 */
export function lineChart(title, series, { stoppedAt = null, stoppedLabel = "stopped", lastEpoch = null } = {}) {
  const drawn = series.filter((s) => s.points.length > 0);
  const figure = h("figure", { class: "curve" }, h("figcaption", {}, title));
  if (drawn.length === 0) {
    figure.append(h("p", { class: "empty" }, "Not reported."));
    return figure;
  }
  const xs = drawn.flatMap((s) => s.points.map(([epoch]) => epoch));
  const ys = drawn.flatMap((s) => s.points.map(([, value]) => value));
  const stopped = Number.isFinite(stoppedAt);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs, stopped && Number.isFinite(lastEpoch) ? lastEpoch : -Infinity)];
  const xDomain = [xMin, xMax > xMin ? xMax : xMin + 1];
  const { svg, x, y } = frame(SMALL, xDomain, extent(ys), { xLabel: "epoch" });
  if (stopped && stoppedAt >= xDomain[0] && stoppedAt <= xDomain[1]) {
    const { width, height, top, bottom, right } = SMALL;
    const at = x(stoppedAt);
    // Its label in the empty part after the line, or before it when the line is at the right edge.
    const room = width - right - at > 70;
    svg.append(h("svg:g", { class: "stop-mark" },
      h("svg:title", {}, `${stoppedLabel}: no epoch after epoch ${stoppedAt}`),
      h("svg:line", { x1: at, x2: at, y1: top, y2: height - bottom }),
      h("svg:text", { x: room ? at + 4 : at - 4, y: top + 10, "text-anchor": room ? "start" : "end" }, stoppedLabel)));
  }
  drawn.forEach((s, i) => {
    const d = s.points.map(([epoch, value], k) => `${k ? "L" : "M"}${x(epoch).toFixed(1)},${y(value).toFixed(1)}`).join("");
    svg.append(h("svg:path", { d, class: `series series-${i}` }));
    for (const [epoch, value] of s.points) {
      svg.append(h("svg:circle", { cx: x(epoch), cy: y(value), r: 3, class: `series-dot series-${i}` },
        h("svg:title", {}, `${s.name}, epoch ${epoch}: ${formatValue(value)}`)));
    }
  });
  svg.setAttribute("aria-label", title);
  figure.append(svg, h("div", { class: "legend" },
    drawn.map((s, i) => h("span", { class: `key series-${i}` }, s.name))));
  return figure;
}
