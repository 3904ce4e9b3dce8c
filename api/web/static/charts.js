// Charts drawn as inline SVG: the objective of every trial with the best-so-far line, per-epoch curves (one
// trial's, or several trials' overlaid), the objective against each hparam, and hparam importance bars.
// One <path> holds all the dots, so 10,000 trials are one element, not 10,000.
//
// Every chart is drawn at its box's real width in CSS pixels (`fitted` redraws it when the box resizes), and
// its viewBox is that same size: its text is the stylesheet's 11px on a laptop and on a wide monitor alike,
// never scaled up or down with the window.

import { formatValue, h } from "./dom.js";

const OBJECTIVE = { height: 260, left: 60, right: 16, top: 16, bottom: 32 };
const CURVE = { height: 190, left: 56, right: 12, top: 12, bottom: 30 };
const SLICE = { height: 200, left: 56, right: 12, top: 12, bottom: 34 };

/**
 * A box that draws `draw(width)` at its own width in CSS pixels, and again whenever that width changes
 * (a resized window, a panel opening). Nothing is drawn while it is hidden (width 0).
 * @param {(width: number) => Node} draw
 */
export function fitted(draw, className = "chart-fit") {
  const box = h("div", { class: className });
  let drawn = 0;
  const observer = new ResizeObserver(() => {
    const width = Math.floor(box.clientWidth);
    if (width > 0 && width !== drawn) {
      drawn = width;
      box.replaceChildren(draw(width));
    }
  });
  observer.observe(box);
  return box;
}

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

/** Ticks of a log axis over [min, max] (both > 0): the powers of ten, with 2 and 5 between them when few. */
export function logTicks(min, max) {
  const low = Math.floor(Math.log10(min));
  const high = Math.ceil(Math.log10(max));
  const inside = (value) => value >= min * (1 - 1e-9) && value <= max * (1 + 1e-9);
  const decades = [];
  for (let power = low; power <= high; power++) decades.push(Number((10 ** power).toPrecision(12)));
  let values = decades.filter(inside);
  if (values.length < 3) {
    values = decades.flatMap((decade) => [decade, decade * 2, decade * 5]).map((v) => Number(v.toPrecision(12))).filter(inside);
  }
  if (values.length > 7) values = values.filter((_, i) => i % Math.ceil(values.length / 6) === 0);
  return values.length ? values : [min];
}

function extent(values, log = false) {
  let min = Infinity;
  let max = -Infinity;
  for (const value of values) {
    if (value < min) min = value;
    if (value > max) max = value;
  }
  if (min === Infinity) return log ? [0.1, 1] : [0, 1];
  if (log) {
    if (min === max) return [min / 2, max * 2];
    const pad = (Math.log10(max) - Math.log10(min)) * 0.05;
    return [min / 10 ** pad, max * 10 ** pad];
  }
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    return [min - pad, max + pad];
  }
  const pad = (max - min) * 0.05;
  return [min - pad, max + pad];
}

/** A scale from `domain` to `range`, linear or log10; `.invert` maps back. */
function scale([d0, d1], [r0, r1], log = false) {
  const f = log ? Math.log10 : (v) => v;
  const [a, b] = [f(d0), f(d1)];
  const factor = (r1 - r0) / (b - a);
  const forward = (value) => r0 + (f(value) - a) * factor;
  forward.invert = (position) => {
    const value = a + (position - r0) / factor;
    return log ? 10 ** value : value;
  };
  return forward;
}

/**
 * An SVG of `width` x `size.height` CSS pixels with its axes. `x` may be {log: true} or {labels: [...]} (one
 * band per label, for a discrete hparam); `y` may be {log: true}. Whole-number x ticks only where `integerX`.
 */
function frame(width, size, xDomain, yDomain, { xLabel, yLabel, xLog = false, yLog = false, labels = null, integerX = false } = {}) {
  const { height, left, right, top, bottom } = size;
  const x = labels
    ? (index) => left + ((index + 0.5) * (width - left - right)) / labels.length
    : scale(xDomain, [left, width - right], xLog);
  const y = scale(yDomain, [height - bottom, top], yLog);
  const svg = h("svg:svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const axes = h("svg:g", { class: "axes" });
  const yTicks = yLog ? logTicks(...yDomain) : ticks(...yDomain, height < 220 ? 4 : 5);
  for (const value of yTicks) {
    axes.append(h("svg:line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid-line" }),
      h("svg:text", { x: left - 6, y: y(value), class: "tick y" }, formatValue(value)));
  }
  // About one x label per 80 px, so they never run into each other however narrow the chart.
  const room = Math.max(2, Math.floor((width - left - right) / 80));
  if (labels) {
    // Every label whose text fits its band (about 7 px a character at 11px), else every second, third...
    const band = (width - left - right) / labels.length;
    const longest = Math.max(...labels.map((label) => shorten(String(label)).length));
    const every = Math.max(1, Math.ceil((longest * 7 + 8) / band));
    labels.forEach((label, index) => {
      if (index % every === 0) axes.append(h("svg:text", { x: x(index), y: height - bottom + 16, class: "tick x" }, shorten(String(label))));
    });
  } else {
    let values = xLog ? logTicks(...xDomain) : ticks(...xDomain, room);
    if (integerX) values = values.filter(Number.isInteger);
    for (const value of values) {
      axes.append(h("svg:text", { x: x(value), y: height - bottom + 16, class: "tick x" }, formatValue(value)));
    }
  }
  axes.append(h("svg:line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  if (xLabel) axes.append(h("svg:text", { x: width - right, y: height - 3, class: "label x" }, xLabel));
  if (yLabel) axes.append(h("svg:text", { x: 4, y: top - 4, class: "label y" }, yLabel));
  svg.append(axes);
  return { svg, x, y };
}

function shorten(text, length = 12) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

/** Where a mouse event falls in the chart's own coordinates. */
function pointer(svg, event) {
  const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(svg.getScreenCTM().inverse());
  return { x: point.x, y: point.y };
}

/** A legend under a chart: [{label, kind: "dot"|"line"|"ring", series?}] */
function legend(entries, className = "legend") {
  return h("div", { class: className },
    entries.map(({ label, kind = "line", series = null, title = null }) =>
      h("span", { class: ["key", `key-${kind}`, series === null ? "" : `series-${series}`].join(" ").trim(), title }, label)));
}

/**
 * The objective of each completed trial (x: its number), with the best value so far as a step line, and a legend.
 * @param {{metric: string, goal: "maximize"|"minimize", points: {trial_id: number, index: number, value: number|null}[]}} objective
 * @param {{bestTrialId?: number, onPick?: (trialId: number) => void, onDrawn?: () => void}} options
 */
export function objectiveChart(objective, { bestTrialId, onPick, onDrawn } = {}) {
  const points = objective.points.filter((p) => p.value !== null && Number.isFinite(p.value));
  if (points.length === 0) return h("p", { class: "empty chart-empty" }, "No completed trials yet.");
  points.sort((a, b) => a.number - b.number);
  const better = objective.goal === "minimize" ? (a, b) => a < b : (a, b) => a > b;
  const xDomain = points.length === 1 ? [points[0].number - 1, points[0].number + 1]
    : [points[0].number, points[points.length - 1].number];
  const yDomain = extent(points.map((p) => p.value));
  const bestPoint = points.find((p) => p.trial_id === bestTrialId);
  const chart = fitted((width) => {
    const drawn = drawObjective(width, objective, points, xDomain, yDomain, better, bestPoint, onPick);
    onDrawn?.();
    return drawn;
  }, "chart-fit objective-fit");
  return h("figure", { class: "objective-chart" }, chart, legend([
    { label: `completed trial (${points.length.toLocaleString("en")})`, kind: "dot", series: 0 },
    { label: `best so far (${objective.goal})`, kind: "line", title: "the best value among the trials up to each one" },
    bestPoint ? { label: "best trial", kind: "ring" } : null,
  ].filter(Boolean), "legend objective-legend"));
}

function drawObjective(width, objective, points, xDomain, yDomain, better, bestPoint, onPick) {
  const size = OBJECTIVE;
  const { svg, x, y } = frame(width, size, xDomain, yDomain, { xLabel: "trial", yLabel: objective.metric, integerX: true });
  const { height, left, right, top, bottom } = size;
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
  svg.append(h("svg:path", { d: line, class: "best-line" }), h("svg:path", { d: dots, class: "dots series-0", "stroke-width": dotSize }));
  if (bestPoint) svg.append(h("svg:circle", { cx: x(bestPoint.number), cy: y(bestPoint.value), r: 6, class: "best-dot" }));

  // Hover shows the nearest trial (by number); a click opens it.
  const marker = h("svg:circle", { r: 5, class: "hover-dot", visibility: "hidden" });
  const label = h("svg:text", { class: "hover-label", visibility: "hidden" });
  const overlay = h("svg:rect", { x: left, y: top, width: Math.max(0, width - left - right), height: height - top - bottom, class: "overlay" });
  svg.append(marker, label, overlay);
  const nearest = (event) => {
    const number = x.invert(pointer(svg, event).x);
    let low = 0;
    let high = points.length - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (points[middle].number < number) low = middle + 1;
      else high = middle;
    }
    if (low > 0 && Math.abs(points[low - 1].number - number) < Math.abs(points[low].number - number)) low -= 1;
    return points[low];
  };
  overlay.addEventListener("mousemove", (event) => {
    const point = nearest(event);
    const px = x(point.number);
    marker.setAttribute("cx", px);
    marker.setAttribute("cy", y(point.value));
    label.textContent = `trial ${point.number}: ${formatValue(point.value)}`;
    // Left of the dot when it would run past the right edge.
    const flip = px > width - right - 140;
    label.setAttribute("x", flip ? px - 8 : px + 8);
    label.setAttribute("text-anchor", flip ? "end" : "start");
    label.setAttribute("y", top + 12);
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
 * Per-epoch curves on one chart, with a legend.
 * @param {string} title
 * @param {{name: string, points: [number, number][]}[]} series  [epoch, value] pairs
 * @param {{stoppedAt?: number, stoppedLabel?: string, lastEpoch?: number, log?: boolean}} options  `stoppedAt`:
 *   the epoch after which the trial was stopped (pruned), marked by a dashed line with `stoppedLabel`; the
 *   axis then runs on to `lastEpoch`, the last one it would have trained, so that the curves visibly end
 *   early. `log`: a log y axis (a learning rate decays by decades); values <= 0 cannot be drawn on it and
 *   are left out, said under the chart
 */
export function lineChart(title, series, { stoppedAt = null, stoppedLabel = "stopped", lastEpoch = null, log = false } = {}) {
  let dropped = 0;
  const drawn = series.map((s, i) => {
    const points = log ? s.points.filter(([, value]) => value > 0) : s.points;
    dropped += s.points.length - points.length;
    return { ...s, points, colour: s.colour ?? i };
  }).filter((s) => s.points.length > 0);
  const figure = h("figure", { class: "curve", dataset: { scale: log ? "log" : "linear" } },
    h("figcaption", {}, title, log ? h("span", { class: "muted scale-note" }, " (log scale)") : null));
  if (drawn.length === 0) {
    figure.append(h("p", { class: "empty" }, dropped ? "Only values of 0 or less: nothing to draw on a log scale." : "Not reported."));
    return figure;
  }
  const xs = drawn.flatMap((s) => s.points.map(([epoch]) => epoch));
  const ys = drawn.flatMap((s) => s.points.map(([, value]) => value));
  const stopped = Number.isFinite(stoppedAt);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs, stopped && Number.isFinite(lastEpoch) ? lastEpoch : -Infinity)];
  const xDomain = [xMin, xMax > xMin ? xMax : xMin + 1];
  const yDomain = extent(ys, log);
  figure.append(fitted((width) => {
    const { svg, x, y } = frame(width, CURVE, xDomain, yDomain, { xLabel: "epoch", yLog: log, integerX: true });
    if (stopped && stoppedAt >= xDomain[0] && stoppedAt <= xDomain[1]) {
      const { height, top, bottom, right } = CURVE;
      const at = x(stoppedAt);
      // Its label in the empty part after the line, or before it when the line is at the right edge.
      const room = width - right - at > 70;
      svg.append(h("svg:g", { class: "stop-mark" },
        h("svg:title", {}, `${stoppedLabel}: no epoch after epoch ${stoppedAt}`),
        h("svg:line", { x1: at, x2: at, y1: top, y2: height - bottom }),
        h("svg:text", { x: room ? at + 4 : at - 4, y: top + 10, "text-anchor": room ? "start" : "end" }, stoppedLabel)));
    }
    for (const s of drawn) {
      const d = s.points.map(([epoch, value], k) => `${k ? "L" : "M"}${x(epoch).toFixed(1)},${y(value).toFixed(1)}`).join("");
      svg.append(h("svg:path", { d, class: `series series-${s.colour}` }));
      for (const [epoch, value] of s.points) {
        svg.append(h("svg:circle", { cx: x(epoch), cy: y(value), r: 3, class: `series-dot series-${s.colour}` },
          h("svg:title", {}, `${s.name}, epoch ${epoch}: ${formatValue(value)}`)));
      }
    }
    svg.setAttribute("aria-label", title);
    return svg;
  }));
  figure.append(legend(drawn.map((s) => ({ label: s.name, kind: "line", series: s.colour }))));
  if (dropped) figure.append(h("p", { class: "muted chart-note" }, `${dropped} value${dropped === 1 ? "" : "s"} of 0 or less left out of the log scale.`));
  return figure;
}

/**
 * The objective against one hparam, a dot per completed trial: a log axis for a log-scaled interval, a band
 * per value for a discrete hparam.
 * @param {string} name  the hparam
 * @param {{type?: string, log?: boolean, values?: unknown[]}} domain  its domain in the spec
 * @param {{value: unknown, objective: number, number: number}[]} points
 * @param {string} metric
 */
export function sliceChart(name, domain, points, metric) {
  const discrete = domain?.type === "discrete";
  const log = !discrete && Boolean(domain?.log);
  const usable = points.filter((p) => Number.isFinite(p.objective) && (discrete || (typeof p.value === "number" && (!log || p.value > 0))));
  const figure = h("figure", { class: "slice", dataset: { hparam: name, scale: discrete ? "discrete" : log ? "log" : "linear" } },
    h("figcaption", {}, name, log ? h("span", { class: "muted scale-note" }, " (log scale)") : null));
  if (usable.length === 0) {
    figure.append(h("p", { class: "empty" }, "No completed trial with this hparam yet."));
    return figure;
  }
  const labels = discrete ? (domain.values ?? [...new Set(usable.map((p) => p.value))]).map((v) => String(v)) : null;
  const xDomain = discrete ? [0, labels.length] : domain?.type && Number.isFinite(domain.min) && Number.isFinite(domain.max)
    ? [domain.min, domain.max] : extent(usable.map((p) => p.value), log);
  const yDomain = extent(usable.map((p) => p.objective));
  figure.append(fitted((width) => {
    const { svg, x, y } = frame(width, SLICE, xDomain, yDomain, { xLog: log, labels, xLabel: name });
    const band = discrete ? (width - SLICE.left - SLICE.right) / labels.length : 0;
    let dots = "";
    for (const point of usable) {
      let px;
      if (discrete) {
        const at = labels.indexOf(String(point.value));
        if (at < 0) continue;
        // Spread within the band by the trial's number, so equal values do not hide each other.
        px = x(at) + (((point.number * 0.618034) % 1) - 0.5) * band * 0.5;
      } else px = x(point.value);
      dots += `M${px.toFixed(1)},${y(point.objective).toFixed(1)}h0`;
    }
    svg.append(h("svg:path", { d: dots, class: "dots series-0", "stroke-width": usable.length > 2000 ? 2.5 : usable.length > 300 ? 3.5 : 5 }));
    svg.setAttribute("aria-label", `${metric} against ${name}, ${usable.length} trials`);
    return svg;
  }));
  return figure;
}

/**
 * Each hparam's importance as a horizontal bar, largest first.
 * @param {{hparam: string, importance: number}[]} importances
 */
export function importanceBars(importances) {
  const largest = Math.max(...importances.map((entry) => entry.importance), 1e-12);
  return h("table", { class: "importance" }, h("tbody", {}, importances.map((entry) =>
    h("tr", { dataset: { hparam: entry.hparam } },
      h("th", { scope: "row" }, entry.hparam),
      h("td", { class: "bar-cell" }, h("div", { class: "bar", style: `width: ${((entry.importance / largest) * 100).toFixed(1)}%` })),
      h("td", { class: "number" }, `${(entry.importance * 100).toFixed(1)}%`)))));
}
