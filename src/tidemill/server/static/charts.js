// Line charts on uPlot (vendor/uPlot.iife.min.js, loaded by index.html as window.uPlot):
// it draws thousands of points per series on a canvas in a few milliseconds, with a
// hover legend, which is what per-rank training curves and week-long utilisation need.

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
export const colour = (i) => PALETTE[i % PALETTE.length];
/** More lines than this (a 64-rank job) get no legend: it would outgrow the chart. */
const MAX_LEGEND = 12;

/** A chart in `host` with one line per name in `names`; `update(x, ys)` redraws it.
 *
 * options: time (x is unix seconds), stepped (a staircase: sizes that hold until they
 * change), height, yLabel, value (formats y in the legend and axis), dashed (names drawn
 * dashed, e.g. capacity beside allocation), colours (name -> colour). */
export function lineChart(host, names, options = {}) {
  const box = document.createElement("div");
  box.className = "chart";
  host.append(box);
  const value = options.value || ((v) => (v == null ? "–" : +v.toPrecision(4)));
  const stepped = options.stepped ? window.uPlot.paths.stepped({ align: 1 }) : undefined;
  const series = [
    options.time ? {} : { label: options.xLabel || "step" },
    ...names.map((name, i) => ({
      label: name,
      stroke: options.colours?.[name] || colour(i),
      width: 1.5,
      dash: options.dashed?.includes(name) ? [6, 4] : undefined,
      paths: stepped,
      spanGaps: true,
      points: { show: false },
      value: (_, v) => value(v),
    })),
  ];
  const plot = new window.uPlot(
    {
      width: Math.max(240, host.clientWidth - 4),
      height: options.height || 180,
      scales: { x: { time: !!options.time }, y: options.yRange ? { range: options.yRange } : {} },
      axes: [
        { stroke: "#57606a", grid: { stroke: "#eaeef2" }, ticks: { stroke: "#d0d7de" }, space: options.time ? 90 : 50 },
        {
          stroke: "#57606a",
          grid: { stroke: "#eaeef2" },
          ticks: { stroke: "#d0d7de" },
          label: options.yLabel,
          size: 72,
          values: (_, ticks) => ticks.map(value),
        },
      ],
      cursor: { drag: { x: true, y: false } },
      legend: { show: names.length <= MAX_LEGEND, live: true },
      series,
    },
    [[], ...names.map(() => [])],
    box,
  );
  const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(240, host.clientWidth - 4), height: options.height || 180 }));
  resize.observe(host);
  return {
    element: box,
    update(x, ys) { plot.setData([x, ...ys]); },
    destroy() { resize.disconnect(); plot.destroy(); box.remove(); },
  };
}
