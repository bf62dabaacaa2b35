// Charts with Plotly.js (served from the installed `plotly` package): one row per name on a
// shared, zoomable time axis, with an uncertainty band under `x` wherever `x_lower`/`x_upper` exist.
import { localTime } from './dom.js';

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
let loading = null;

/** window.Plotly, loading the script on first use (the fleet page never needs it). */
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  loading ??= new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = 'ui/vendor/plotly.min.js';
    script.onload = () => resolve(window.Plotly);
    script.onerror = () => {
      loading = null;
      script.remove();
      reject(new Error("charts need Plotly.js from the 'plotly' package: pip install 'plotly>=5,<7'"));
    };
    document.head.append(script);
  });
  return loading;
}

/** Names `x` that have both `x_lower` and `x_upper` among `columns`. */
export function bandsOf(columns) {
  const all = new Set(columns);
  return new Set(columns.filter((c) => all.has(`${c}_lower`) && all.has(`${c}_upper`)));
}

/** The names to fetch for `names`: each banded name brings its lower and upper bound. */
export const withBands = (names, bands) =>
  names.flatMap((n) => (bands.has(n) ? [n, `${n}_lower`, `${n}_upper`] : [n]));

function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

/**
 * Plotly traces and layout for a history answer `{ts, series}` over `[from, to]` (epoch ms).
 * With `agg=auto` the answer says per name what each point is (`aggs`): `last` is a measured
 * value (drawn as steps when bucketed), `avg` a mean drawn with its min–max envelope, so a chart
 * never shows an invented value without saying it is a mean.
 */
export function figure(history, names, bands, unitOf, [from, to], every) {
  const x = history.ts.map((ms) => localTime(ms, true));
  const mode = x.length <= 60 ? 'lines+markers' : 'lines';
  const data = [];
  const layout = {
    grid: { rows: names.length, columns: 1, pattern: 'coupled', roworder: 'top to bottom', ygap: 0.18 },
    height: 70 + 170 * names.length,
    margin: { l: 64, r: 12, t: 12, b: 36 },
    showlegend: false,
    hovermode: 'x unified',
    uirevision: names.join(','), // keeps the user's zoom when live data redraws the chart
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: 'rgba(0,0,0,0)',
    font: { size: 12 },
    // the requested range, so a lone point is not stretched over an axis ticked in microseconds
    xaxis: { type: 'date', range: [localTime(from, true), localTime(to, true)], nticks: 8 },
  };
  const aggs = history.aggs || {};
  names.forEach((name, k) => {
    const yaxis = k ? `y${k + 1}` : 'y';
    const color = COLORS[k % COLORS.length];
    const series = (n) => history.series[n] || [];
    const edge = { x, xaxis: 'x', yaxis, mode: 'lines', line: { width: 0, color }, connectgaps: false, hoverinfo: 'skip' };
    const mean = aggs[name] === 'avg';
    if (mean) {
      data.push({ ...edge, y: history.min[name], name: `${name} min` });
      data.push({ ...edge, y: history.max[name], name: `${name} max`, fill: 'tonexty', fillcolor: rgba(color, 0.12) });
    }
    if (bands.has(name)) {
      data.push({ ...edge, y: series(`${name}_lower`), name: `${name}_lower`, hoverinfo: undefined });
      data.push({ ...edge, y: series(`${name}_upper`), name: `${name}_upper`, fill: 'tonexty', fillcolor: rgba(color, 0.22), hoverinfo: undefined });
    }
    const label = mean ? `${name} (mean per ${every})` : name;
    const shape = aggs[name] === 'last' ? 'hv' : 'linear'; // a measured level holds until the next
    data.push({ x, y: series(name), xaxis: 'x', yaxis, name: label, mode, line: { color, width: 2, shape }, marker: { size: 4 } });
    const unit = unitOf(name);
    layout[k ? `yaxis${k + 1}` : 'yaxis'] = { title: { text: unit ? `${name} (${unit})` : name }, automargin: true };
  });
  return { data, layout, config: { responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'] } };
}

/** A small SVG sparkline of `values` (nulls are gaps), with an optional band `[lower, upper]`. */
export function sparkline(values, band = null, { width = 120, height = 28 } = {}) {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  const all = [...values, ...(band ? [...band[0], ...band[1]] : [])].filter((v) => v !== null && Number.isFinite(v));
  if (!all.length) return svg;
  const lo = Math.min(...all);
  const hi = Math.max(...all);
  const n = Math.max(values.length - 1, 1);
  const px = (i) => ((i / n) * (width - 2) + 1).toFixed(1);
  const py = (v) => (hi === lo ? height / 2 : height - 2 - ((v - lo) / (hi - lo)) * (height - 4)).toFixed(1);
  const path = (ys) => ys.map((v, i) => (v === null ? null : `${px(i)},${py(v)}`));
  const line = (points) =>
    points.reduce((d, p, i) => (p === null ? d : d + `${i && points[i - 1] !== null ? 'L' : 'M'}${p}`), '');
  if (band) {
    const [lower, upper] = band;
    const keep = lower.map((v, i) => v !== null && upper[i] !== null);
    const top = upper.map((v, i) => (keep[i] ? `${px(i)},${py(v)}` : null)).filter(Boolean);
    const bottom = lower.map((v, i) => (keep[i] ? `${px(i)},${py(v)}` : null)).filter(Boolean).reverse();
    if (top.length) {
      const area = document.createElementNS(NS, 'path');
      area.setAttribute('class', 'spark-band');
      area.setAttribute('d', `M${top.join('L')}L${bottom.join('L')}Z`);
      svg.append(area);
    }
  }
  const trace = document.createElementNS(NS, 'path');
  trace.setAttribute('class', 'spark-line');
  trace.setAttribute('d', line(path(values)));
  svg.append(trace);
  return svg;
}
