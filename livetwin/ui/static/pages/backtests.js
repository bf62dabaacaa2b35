// Back-tests: start one (a candidate as YAML over a window), list them with their state and
// progress, and read a report: outputs that differ, alarms per rule, new outputs, failing
// expressions, calibration settings (re-filtered: parameters and prediction scores), and a
// baseline-vs-candidate plot for a chosen twin and output.
import { api, errorBox } from '../api.js';
import { loadPlotly } from '../chart.js';
import { append, fmt, h, localTime, navigate, replace, replaceQuery, table } from '../dom.js';

const POLL_MS = 1000;
const badge = (state) => h('span', { class: `badge run-${state}`, 'data-state': state }, state);
const pct = (p) => (p && p.total ? `${Math.round((100 * p.done) / p.total)} %` : '');
const num = (x) => (x === null || x === undefined ? '—' : fmt(x));

export async function renderList(root, { signal }) {
  const types = await api('api/types', { signal });
  const listBox = h('div', { id: 'backtests' });
  const status = h('div', { class: 'form-status' });
  const form = h(
    'form',
    {
      class: 'filters backtest-form',
      onsubmit: async (e) => {
        e.preventDefault();
        const f = new FormData(e.target);
        const body = [
          `type: ${JSON.stringify(f.get('type'))}`,
          `from: ${JSON.stringify(f.get('from'))}`,
          `to: ${JSON.stringify(f.get('to'))}`,
          'candidate:',
          '  patch:',
          ...String(f.get('patch')).split('\n').map((line) => `    ${line}`),
        ].join('\n');
        try {
          const started = await api('api/backtests', { method: 'POST', body, type: 'application/yaml' });
          navigate(`#/backtests/${encodeURIComponent(started.id)}`);
        } catch (err) {
          replace(status, errorBox(err));
        }
      },
    },
    h('label', {}, 'Type', h('select', { name: 'type' }, types.map((t) => h('option', { value: t.name }, t.name)))),
    h('label', {}, 'From', h('input', { name: 'from', placeholder: '2026-11-22T00:00:00Z', required: true })),
    h('label', {}, 'To', h('input', { name: 'to', placeholder: '2026-11-23T00:00:00Z', required: true })),
    h('label', { class: 'wide' }, 'Candidate (a patch of the current version, YAML)',
      h('textarea', { name: 'patch', rows: 5, placeholder: "derived:\n  flow_avg: avg(flow, '30m')\nrules:\n  high: {when: flow > 90, for: 5m}" })),
    h('button', { type: 'submit' }, 'Run back-test'),
  );
  append(
    root,
    h('h1', {}, 'Back-tests'),
    h('section', { class: 'card' }, h('h2', {}, 'New back-test'), form, status),
    h('section', { class: 'card' }, h('h2', {}, 'Runs'), listBox),
  );
  async function load() {
    const runs = await api('api/backtests', { signal });
    replace(
      listBox,
      runs.length
        ? table('backtests', ['id', 'type', 'window', 'state', 'progress', 'created'], runs.map((r) =>
          h('tr', {},
            h('td', {}, h('a', { href: `#/backtests/${encodeURIComponent(r.id)}` }, r.id)),
            h('td', {}, r.args?.type ?? ''),
            h('td', {}, `${r.args?.from ?? ''} → ${r.args?.to ?? ''}`),
            h('td', {}, badge(r.state)),
            h('td', {}, pct(r.progress)),
            h('td', {}, r.created ? localTime(Date.parse(r.created)) : '')),
        ))
        : h('p', { class: 'muted' }, 'No back-tests yet.'),
    );
    if (runs.some((r) => r.state === 'queued' || r.state === 'running')) setTimeout(() => signal.aborted || load(), POLL_MS);
  }
  await load();
}

export async function renderReport(root, { args: [id], params, signal }) {
  const head = h('div', {});
  const body = h('div', {});
  append(root, h('h1', {}, 'Back-test ', h('code', {}, id)), head, body);
  let done = null;
  while (!signal.aborted) {
    done = await api(`api/backtests/${encodeURIComponent(id)}`, { signal });
    replace(head, h('p', {}, badge(done.state), ' ', pct(done.progress), done.error ? h('span', { class: 'error' }, ` ${done.error}`) : ''));
    if (done.state !== 'queued' && done.state !== 'running') break;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  const report = done?.report;
  if (!report) return;
  const o = report.observations;
  append(
    body,
    h('p', {},
      `${report.type}: ${report.window.from} → ${report.window.to}; ${fmt(o.compared)} observations of ${fmt(o.twins)} twins compared `,
      `(${fmt(o.replayed)} replayed in ${fmt(report.seconds)} s). `,
      report.identical ? h('strong', {}, 'The candidate changes nothing.') : '',
      ' ', h('a', { href: `api/backtests/${encodeURIComponent(id)}?format=csv` }, 'CSV')),
    section('Outputs that differ', report.outputs.length && table('outputs',
      ['output', 'differing', 'twins', 'max |diff|', 'RMS', 'first divergence', 'worst twins'],
      report.outputs.map((d) => h('tr', {},
        h('td', {}, d.name), h('td', {}, `${fmt(d.differing)} / ${fmt(d.compared)}`), h('td', {}, fmt(d.twins_affected)),
        h('td', {}, num(d.max_abs_diff)), h('td', {}, num(d.rms_diff)),
        h('td', {}, d.first_divergence ? `${d.first_divergence.ts} (${d.first_divergence.twin})` : '—'),
        h('td', {}, d.worst_twins.slice(0, 3).map((w) => w.twin).join(', ')))))),
    section('Rules', report.rules.length && table('rules',
      ['rule', 'status', 'recorded', 'candidate', 'would raise', 'never raised', 'cleared differently', 'precision', 'recall'],
      report.rules.map((r) => h('tr', {},
        h('td', {}, r.rule), h('td', {}, r.status), h('td', {}, fmt(r.baseline_alarms)), h('td', {}, fmt(r.candidate_alarms)),
        h('td', {}, fmt(r.would_raise)), h('td', {}, fmt(r.never_raised)), h('td', {}, fmt(r.cleared_differently)),
        h('td', {}, num(r.precision)), h('td', {}, num(r.recall)))))),
    section('New outputs', report.new_outputs.length && table('new-outputs',
      ['output', 'known', 'mean', 'std', 'min', 'p50', 'max'],
      report.new_outputs.map((d) => h('tr', {},
        h('td', {}, d.name), h('td', {}, `${fmt(d.known)} / ${fmt(d.count)}`), h('td', {}, num(d.mean)), h('td', {}, num(d.std)),
        h('td', {}, num(d.min)), h('td', {}, num(d.quantiles?.p50)), h('td', {}, num(d.max)))))),
    section('Expressions failing on recorded data', report.failures.length && table('failures',
      ['output', 'infinite', 'unknown', 'twins', 'example'],
      report.failures.map((f) => h('tr', {},
        h('td', {}, h('code', {}, `${f.name} = ${f.expr}`)), h('td', {}, fmt(f.infinite)), h('td', {}, fmt(f.unknown)),
        h('td', {}, fmt(f.twins)),
        h('td', {}, f.examples[0] ? `${f.examples[0].twin} at ${f.examples[0].ts}: ${f.examples[0].problem}${f.examples[0].missing.length ? ` (no ${f.examples[0].missing.join(', ')})` : ''}` : ''))))),
    ...calibration(report.calibration),
  );
  plot(body, report, params, signal);
}

/** A calibration back-test: parameters' final means and bands, and which side predicts the
 * recorded measurements better (one-step-ahead RMS error, 95 % band coverage). */
function calibration(c) {
  if (!c) return [];
  if (!c.outputs) return [section('Calibration', h('p', { class: 'muted' }, c.note ?? 'Not run.'))];
  const side = (s) => `${num(s.rms_error)} / ${num(s.coverage_95)}`;
  return [
    section(`Calibration (${c.changes.join(', ')}; start: ${c.start}; ${fmt(c.twins)} twins, ${fmt(c.steps)} steps)`, table('calibration-parameters',
      ['parameter', 'twins affected', 'max |diff|', 'RMS diff', 'band width ratio', 'worst twins'],
      c.parameters.map((p) => h('tr', {},
        h('td', {}, p.name), h('td', {}, p.status === 'both' ? fmt(p.twins_affected) : p.status), h('td', {}, num(p.max_abs_diff)),
        h('td', {}, num(p.rms_diff)), h('td', {}, num(p.band_width_ratio)),
        h('td', {}, (p.worst_twins || []).slice(0, 3).map((w) => `${w.twin}: ${fmt(w.baseline.mean)} → ${fmt(w.candidate.mean)}`).join(', ')))))),
    section('Calibration: predicting the recorded measurements (RMS error / 95 % coverage)', table('calibration-outputs',
      ['output', 'baseline', 'candidate', 'better'],
      c.outputs.map((o) => h('tr', {},
        h('td', {}, o.name), h('td', {}, side(o.baseline)), h('td', {}, side(o.candidate)), h('td', {}, o.better ?? '—'))))),
  ];
}

function section(title, content) {
  return h('section', { class: 'card' }, h('h2', {}, title), content || h('p', { class: 'muted' }, 'None.'));
}

/** Baseline vs candidate of one output for one twin (the twins the report kept series of). */
function plot(body, report, params, signal) {
  const twins = Object.keys(report.series || {});
  if (!twins.length) return;
  const outputsOf = (twin) => Object.keys(report.series[twin].outputs);
  let twin = twins.includes(params.get('twin')) ? params.get('twin') : twins[0];
  let output = outputsOf(twin).includes(params.get('output')) ? params.get('output') : (report.outputs[0]?.name ?? outputsOf(twin)[0]);
  const chart = h('div', { class: 'chart', id: 'backtest-chart' });
  const pick = (name, options, value) => h('select', { name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
  const form = h('form', {
    class: 'filters',
    onchange: (e) => {
      const f = new FormData(e.currentTarget);
      twin = f.get('twin');
      output = outputsOf(twin).includes(f.get('output')) ? f.get('output') : outputsOf(twin)[0];
      replaceQuery({ twin, output });
      draw();
    },
  }, h('label', {}, 'Twin', pick('twin', twins, twin)), h('label', {}, 'Output', pick('output', outputsOf(twin), output)));
  append(body, h('section', { class: 'card' }, h('h2', {}, 'Baseline vs candidate'), form, chart));
  signal.addEventListener('abort', () => window.Plotly?.purge(chart));
  async function draw() {
    const Plotly = await loadPlotly();
    const s = report.series[twin];
    const x = s.ts;
    const y = s.outputs[output] || { baseline: [], candidate: [] };
    const line = (name, values, color, dash) => ({ x, y: values, name, mode: 'lines', line: { color, width: 2, dash } });
    await Plotly.react(
      chart,
      [line('baseline (recorded)', y.baseline, '#1f77b4'), line('candidate', y.candidate, '#ff7f0e', 'dot')],
      { height: 360, margin: { l: 64, r: 12, t: 12, b: 36 }, xaxis: { type: 'date' }, yaxis: { title: { text: output } },
        paper_bgcolor: 'rgba(0,0,0,0)', plot_bgcolor: 'rgba(0,0,0,0)', hovermode: 'x unified' },
      { responsive: true, displaylogo: false },
    );
  }
  draw().catch((err) => append(body, errorBox(err)));
}
