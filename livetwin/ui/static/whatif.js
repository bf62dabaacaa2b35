// The twin page's "What if" card (types with a model): change one input (a step, a ramp or a
// constant), run a scenario from the twin's calibrated state (POST /api/scenarios), and see the
// forecast with its 95 % band beside the baseline and the recorded past (docs/scenarios.md).
import { api, errorBox, twinPath } from './api.js';
import { loadPlotly } from './chart.js';
import { fmt, h, localTime, replace } from './dom.js';

const POLL_MS = 500;
const SCENARIO = '#d62728';
const BASELINE = '#7f7f7f';

/** The card for twin `twin` of a type with `spec` (a model); returns its element. */
export function whatIfCard(twin, spec, signal) {
  const properties = Object.keys(spec.properties);
  const field = (label, input) => h('label', {}, label, input);
  const input = (name, value, attrs = {}) => h('input', { name, value, size: 6, ...attrs });
  const select = (name, options, value) =>
    h('select', { name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
  const form = h(
    'form',
    { class: 'chart-controls whatif-form' },
    field('Input', select('input', properties, properties.find((p) => /torque|input|set/.test(p)) || properties[0])),
    field('Change', select('kind', ['step', 'ramp', 'constant'], 'step')),
    field('', select('mode', ['factor', 'by', 'to'], 'factor')),
    field('', input('amount', '1.2', { type: 'number', step: 'any', required: true })),
    field('At', input('at', '1m')),
    field('Over (ramp)', input('over', '1m')),
    field('Horizon', input('horizon', '10m')),
    field('Every', input('step', '10s')),
    field('Show', select('output', properties, properties[0])),
    h('button', { type: 'submit' }, 'Run'),
  );
  const status = h('p', { class: 'muted small', id: 'whatif-status', 'aria-live': 'polite' });
  const chart = h('div', { id: 'whatif-chart', class: 'chart' });
  const report = h('div', { id: 'whatif-report' });
  let result = null;

  const request = () => {
    const f = new FormData(form);
    const kind = f.get('kind');
    const amount = Number(f.get('amount'));
    const change = kind === 'constant' ? { value: amount } : { [f.get('mode')]: amount, at: f.get('at') };
    if (kind === 'ramp') change.over = f.get('over');
    return {
      name: `${f.get('input')} ${kind} ${kind === 'constant' ? '' : f.get('mode')} ${amount}`.replace(/\s+/g, ' '),
      twins: [twin.id],
      horizon: f.get('horizon'),
      step: f.get('step') || undefined,
      inputs: { [f.get('input')]: { kind, ...change } },
    };
  };

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    form.querySelector('button').disabled = true;
    replace(report);
    try {
      let record = await api('api/scenarios', { method: 'POST', body: request(), signal });
      while (record.status === 'queued' || record.status === 'running') {
        status.textContent = `${record.status}… ${Math.round(100 * record.progress)} %`;
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        record = await api(`api/scenarios/${record.id}`, { query: { twin: twin.id }, signal });
      }
      if (record.status === 'failed') throw new Error(`the scenario failed: ${record.error}`);
      result = record;
      const names = record.summary.columns.filter((c) => !/_(lower|upper)$/.test(c));
      const shown = form.elements.output.value;
      form.elements.output.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
      form.elements.output.value = names.includes(shown) ? shown : names[0];
      status.textContent = `scenario ${record.id} · run ${record.run}`;
      await draw();
    } catch (err) {
      if (err.name !== 'AbortError') {
        status.textContent = '';
        replace(report, errorBox(err));
      }
    } finally {
      form.querySelector('button').disabled = false;
    }
  });
  form.elements.output.addEventListener('change', () => result && draw());
  signal.addEventListener('abort', () => window.Plotly?.purge(chart));

  async function draw() {
    const name = form.elements.output.value;
    const series = result.series[twin.id];
    const start = result.summary.twins[0].start;
    const span = series.ts[series.ts.length - 1] - start;
    const recorded = { names: name, from: start - span, to: start + 1 }; // inputs: not recorded
    const [past, Plotly] = await Promise.all([
      api(twinPath(twin.id, '/history'), { query: recorded, signal }).catch(() => null),
      loadPlotly(),
    ]);
    const x = series.ts.map((ms) => localTime(ms, true));
    const data = [];
    const band = (side, color) => {
      const s = series[side][name];
      if (!s?.lower) return;
      const edge = { x, mode: 'lines', line: { width: 0, color }, hoverinfo: 'skip', showlegend: false };
      data.push({ ...edge, y: s.lower }, { ...edge, y: s.upper, fill: 'tonexty', fillcolor: `${color}33` });
    };
    band('baseline', BASELINE);
    band('scenario', SCENARIO);
    data.push({ x, y: series.baseline[name].mean, name: 'baseline', mode: 'lines', line: { color: BASELINE, dash: 'dot' } });
    data.push({ x, y: series.scenario[name].mean, name: 'scenario', mode: 'lines', line: { color: SCENARIO, width: 2 } });
    if (past?.series?.[name]) {
      const xs = past.ts.map((ms) => localTime(ms, true));
      data.push({ x: xs, y: past.series[name], name: 'recorded', mode: 'lines', line: { color: '#1f77b4' }, connectgaps: true });
    }
    const layout = {
      height: 320,
      margin: { l: 64, r: 12, t: 12, b: 36 },
      xaxis: { type: 'date' },
      yaxis: { title: { text: name }, automargin: true },
      legend: { orientation: 'h' },
      shapes: [{ type: 'line', xref: 'x', yref: 'paper', x0: localTime(start, true), x1: localTime(start, true), y0: 0, y1: 1, line: { dash: 'dash', width: 1 } }],
      paper_bgcolor: 'rgba(0,0,0,0)',
      plot_bgcolor: 'rgba(0,0,0,0)',
    };
    await Plotly.react(chart, data, layout, { responsive: true, displaylogo: false });
    chart.dataset.points = String(series.ts.length);
    const diff = result.summary.twins[0].difference[name];
    const alarms = result.summary.alarms.only_in_scenario;
    replace(
      report,
      h('p', { class: 'small' },
        diff ? `${name}: largest difference to the baseline ${fmt(diff.max_abs)} at ${localTime(diff.at, true)}, ${fmt(diff.final)} at the end. ` : `${name}: no difference to the baseline. `,
        'Shaded: 95 % band (forecast from the calibrated state; dashed line: where it starts).'),
      alarms.length
        ? h('ul', { class: 'whatif-alarms' }, alarms.map((a) => h('li', {}, `${a.rule} would be raised at ${localTime(Date.parse(a.raised), true)}: ${a.message}`)))
        : h('p', { class: 'muted small' }, 'No alarm that the baseline would not raise too.'),
    );
  }

  return h('section', { class: 'card', id: 'whatif' }, h('h2', {}, 'What if'), form, status, report, chart);
}
