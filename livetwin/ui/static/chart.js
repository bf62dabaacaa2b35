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

/** Plotly traces and layout for a history answer `{ts, series}`. */
export function figure(history, names, bands, unitOf) {
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
    xaxis: { type: 'date' },
  };
  names.forEach((name, k) => {
    const yaxis = k ? `y${k + 1}` : 'y';
    const color = COLORS[k % COLORS.length];
    const series = (n) => history.series[n] || [];
    if (bands.has(name)) {
      const edge = { x, xaxis: 'x', yaxis, mode: 'lines', line: { width: 0, color }, connectgaps: false };
      data.push({ ...edge, y: series(`${name}_lower`), name: `${name}_lower` });
      data.push({ ...edge, y: series(`${name}_upper`), name: `${name}_upper`, fill: 'tonexty', fillcolor: rgba(color, 0.22) });
    }
    data.push({ x, y: series(name), xaxis: 'x', yaxis, name, mode, line: { color, width: 2 }, marker: { size: 4 } });
    const unit = unitOf(name);
    layout[k ? `yaxis${k + 1}` : 'yaxis'] = { title: { text: unit ? `${name} (${unit})` : name }, automargin: true };
  });
  return { data, layout, config: { responsive: true, displaylogo: false, modeBarButtonsToRemove: ['lasso2d', 'select2d'] } };
}
