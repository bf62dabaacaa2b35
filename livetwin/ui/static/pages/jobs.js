// Jobs and schedules: runs (state, attempts, duration, logs) with filters, schedules with
// "run now", and functions with their event joins; refreshed live by run notices over SSE.
import { api, coalesce, errorBox, listen, qs } from '../api.js';
import { ago, append, h, localTime, navigate, replace, table } from '../dom.js';
import { triggerText, until } from '../schedules.js';

const RUN_STATES = ['queued', 'running', 'succeeded', 'failed'];
const LIMITS = ['20', '50', '100', '500'];
const LIVE_MS = 300;
const BUSY_POLL_MS = 2000; // while runs are queued or running (a notice comes only when one ends)

const when = (iso) => (iso ? h('span', { title: localTime(Date.parse(iso), true) }, ago(Date.parse(iso))) : '—');
const badge = (state) => h('span', { class: `badge run-${state}`, 'data-state': state }, state);
const json = (value) => h('pre', { class: 'json' }, JSON.stringify(value, null, 2));

/** '850 ms', '12.5 s', '3 min 4 s' from milliseconds. */
export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Number(ms.toPrecision(3))} ms`;
  if (ms < 60_000) return `${Number((ms / 1000).toPrecision(3))} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export async function render(root, { params, signal }) {
  const filters = {
    function: params.get('function') || '',
    state: params.get('state') || '',
    schedule: params.get('schedule') || '',
    limit: params.get('limit') || '50',
  };
  const go = (changes) => navigate(`#/jobs?${qs({ ...filters, ...changes })}`);
  const [functions, schedules] = await Promise.all([api('api/functions', { signal }), api('api/schedules', { signal })]);

  const live = h('span', { class: 'live off', id: 'live' }, 'connecting…');
  const select = (name, options) =>
    h('select', { name }, options.map(([value, label]) => h('option', { value, selected: value === filters[name] }, label ?? value)));
  const form = h(
    'form',
    {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        go(Object.fromEntries(new FormData(e.target)));
      },
      onchange: (e) => e.currentTarget.requestSubmit(),
    },
    h('label', {}, 'Function', select('function', [['', 'all functions'], ...unique(functions.map((f) => f.name)).map((n) => [n])])),
    h('label', {}, 'State', select('state', [['', 'any state'], ...RUN_STATES.map((s) => [s])])),
    h('label', {}, 'Schedule', select('schedule', [['', 'any schedule'], ...schedules.map((s) => [s.id])])),
    h('label', {}, 'Show', select('limit', LIMITS.map((n) => [n, `newest ${n}`]))),
    h('a', { href: '#/jobs', class: 'button secondary' }, 'Clear filters'),
  );
  const runsBox = h('div', { id: 'runs' });
  const schedulesBox = h('div', { id: 'schedules' });
  const functionsBox = h('div', { id: 'functions' });
  append(
    root,
    h('h1', {}, 'Jobs & schedules ', live),
    h('section', { class: 'card' }, h('h2', {}, 'Runs'), form, runsBox),
    h('section', { class: 'card' }, h('h2', {}, 'Schedules'), schedulesBox),
    h('section', { class: 'card' }, h('h2', {}, 'Functions and event joins'), functionsBox),
  );

  // ---- runs ------------------------------------------------------------------------------------
  const opened = new Set(); // runs whose logs are shown
  let busy = false;

  async function loadRuns() {
    let runs;
    try {
      runs = await api('api/runs', { query: filters, signal });
    } catch (err) {
      if (err.name !== 'AbortError') replace(runsBox, errorBox(err));
      return;
    }
    busy = runs.some((r) => r.state === 'queued' || r.state === 'running');
    const rows = runs.flatMap((run) => {
      const details = h('tr', { class: 'details', hidden: !opened.has(run.id) }, h('td', { colspan: '9' }));
      const toggle = h('button', { type: 'button', class: 'secondary logs', 'aria-expanded': String(opened.has(run.id)) }, opened.has(run.id) ? 'Hide' : 'Logs');
      toggle.addEventListener('click', () => {
        const show = !opened.has(run.id);
        if (show) opened.add(run.id);
        else opened.delete(run.id);
        details.hidden = !show;
        toggle.textContent = show ? 'Hide' : 'Logs';
        toggle.setAttribute('aria-expanded', String(show));
        if (show) loadRun(run.id, details.firstChild);
      });
      if (opened.has(run.id)) loadRun(run.id, details.firstChild);
      const row = h(
        'tr',
        { 'data-run': run.id, 'data-function': run.function },
        h('td', {}, h('code', { title: run.id }, run.id.replace(/^run_/, '').slice(0, 8))),
        h('td', {}, run.function, run.namespace !== 'default' && h('div', { class: 'muted small' }, run.namespace)),
        h('td', {}, badge(run.state)),
        h('td', { class: 'num attempts' }, String(run.attempts)),
        h('td', { class: 'small' }, run.trigger?.kind || '—', run.schedule && h('div', { class: 'muted' }, run.schedule)),
        h('td', { class: 'small result' }, resultText(run)),
        h('td', { class: 'nowrap' }, when(run.created)),
        h('td', { class: 'num nowrap duration' }, duration(run.duration_ms)),
        h('td', { class: 'act' }, run.error && h('div', { class: 'run-error small' }, run.error), toggle),
      );
      return [row, details];
    });
    replace(
      runsBox,
      runs.length
        ? table('runs', ['Run', 'Function', 'State', 'Attempts', 'Trigger', 'Result', 'Created', 'Duration', ''], rows)
        : h('p', { class: 'empty' }, 'No runs match.'),
    );
  }

  async function loadRun(id, cell) {
    try {
      const run = await api(`api/runs/${encodeURIComponent(id)}`, { signal });
      replace(
        cell,
        h('div', { class: 'run-details' },
          h('p', { class: 'small' },
            `created ${localTime(Date.parse(run.created), true)}`,
            run.started && ` · started ${localTime(Date.parse(run.started), true)}`,
            run.finished && ` · finished ${localTime(Date.parse(run.finished), true)}`,
            ` · ${run.attempts} attempt${run.attempts === 1 ? '' : 's'}`),
          h('h3', {}, 'Logs'),
          run.logs.length ? h('pre', { class: 'logs' }, run.logs.join('\n')) : h('p', { class: 'muted small' }, 'no log lines'),
          run.error && [h('h3', {}, 'Error'), h('pre', { class: 'logs run-error' }, run.error)],
          run.result !== null && [h('h3', {}, 'Result'), json(run.result)],
          h('details', {}, h('summary', {}, 'trigger, args and events'), json({ trigger: run.trigger, args: run.args, events: run.events }))),
      );
    } catch (err) {
      if (err.name !== 'AbortError') replace(cell, errorBox(err));
    }
  }

  // ---- schedules -------------------------------------------------------------------------------
  function showSchedules(list) {
    replace(
      schedulesBox,
      list.length
        ? table('schedules', ['Schedule', 'Function', 'Trigger', 'Next', 'Last fired', 'Enabled', ''], list.map((s) => {
            const out = h('div', { class: 'row-error' });
            const button = h('button', { type: 'button', class: 'run-now' }, 'Run now');
            button.addEventListener('click', async () => {
              button.disabled = true;
              out.replaceChildren();
              try {
                const run = await api(`api/schedules/${encodeURIComponent(s.id)}/run`, { method: 'POST', signal });
                out.append(h('span', { class: 'muted small' }, 'queued ', h('code', {}, run.id)));
                await Promise.all([loadRuns(), loadFunctions()]);
              } catch (err) {
                if (err.name !== 'AbortError') out.append(errorBox(err));
              } finally {
                button.disabled = false;
              }
            });
            return h(
              'tr',
              { 'data-schedule': s.id },
              h('td', {}, h('a', { href: `#/jobs?${qs({ schedule: s.id })}` }, s.id), s.description && h('div', { class: 'muted small' }, s.description)),
              h('td', {}, s.function, s.namespace !== 'default' && h('div', { class: 'muted small' }, s.namespace)),
              h('td', { class: 'small trigger' }, triggerText(s.trigger), h('div', { class: 'muted' }, `missed: ${s.missed}`)),
              h('td', { class: 'nowrap next' }, s.enabled && s.next ? h('span', { title: localTime(Date.parse(s.next), true) }, until(s.next)) : '—'),
              h('td', { class: 'nowrap' }, when(s.last_fired), h('div', { class: 'muted small' }, `${s.fired} fired`)),
              h('td', {}, s.enabled ? h('span', { class: 'badge fresh' }, 'enabled') : h('span', { class: 'badge stale' }, 'disabled'),
                s.last_error && h('div', { class: 'run-error small' }, s.last_error)),
              h('td', { class: 'act' }, button, out),
            );
          }))
        : h('p', { class: 'empty' }, 'No schedules: add one with POST /api/schedules (see the API docs).'),
    );
  }

  // ---- functions -------------------------------------------------------------------------------
  function showFunctions(list) {
    replace(
      functionsBox,
      list.length
        ? table('functions', ['Function', 'Kind', 'Joins (ready / waiting)', 'Queue', 'Last run', 'Last error'], list.map((f) =>
            h(
              'tr',
              { 'data-function': f.name, 'data-namespace': f.namespace },
              h('td', {}, h('a', { href: `#/jobs?${qs({ function: f.name })}` }, f.name), f.namespace !== 'default' && h('div', { class: 'muted small' }, f.namespace),
                !f.registered && h('div', { class: 'badge stale', title: 'declared in code that has not registered it in this process: its runs wait' }, 'not registered')),
              h('td', { class: 'small' }, f.kind, f.description && h('div', { class: 'muted' }, f.description)),
              h('td', { class: 'joins' }, joins(f)),
              h('td', { class: 'small nowrap' }, `${f.queued} queued · ${f.running} running`),
              h('td', {}, f.last_run ? [badge(f.last_run.state), ' ', when(f.last_run.finished)] : h('span', { class: 'muted' }, 'never')),
              h('td', { class: 'small' }, f.last_error
                ? [h('span', { class: 'run-error' }, f.last_error.error), h('div', { class: 'muted' }, when(f.last_error.finished), ' · ', h('code', {}, f.last_error.run))]
                : '—'),
            )))
        : h('p', { class: 'empty' }, 'No functions declared yet.'),
    );
  }

  async function loadFunctions() {
    try {
      const [fresh, sched] = await Promise.all([api('api/functions', { signal }), api('api/schedules', { signal })]);
      showFunctions(fresh);
      showSchedules(sched);
    } catch (err) {
      if (err.name !== 'AbortError') replace(functionsBox, errorBox(err));
    }
  }

  showSchedules(schedules);
  showFunctions(functions);
  await loadRuns();

  const refresh = coalesce(() => Promise.all([loadRuns(), loadFunctions()]), LIVE_MS, signal);
  listen({ kinds: 'run' }, { run: refresh, reset: refresh }, signal, (text, on) => {
    live.textContent = text;
    live.className = on ? 'live on' : 'live off';
  });
  const timer = setInterval(() => {
    if (busy && document.visibilityState === 'visible') refresh();
  }, BUSY_POLL_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}

const unique = (names) => [...new Set(names)].sort();

/** A run's result in a line: a calibration's type, twins calibrated, failed and skipped. */
function resultText(run) {
  const r = run.result;
  if (!r || typeof r !== 'object') return '';
  if (run.function === 'calibrate' && 'calibrated' in r) {
    const n = (obj) => Object.keys(obj || {}).length;
    return h('span', { class: 'cal-result', 'data-status': r.status },
      `${r.type}: ${r.calibrated} of ${r.twins} calibrated, ${r.steps} steps`,
      n(r.failed) ? `, ${n(r.failed)} failed` : '', n(r.skipped) ? `, ${n(r.skipped)} skipped` : '');
  }
  return '';
}

/** A function's event joins: per key, the events that have arrived and those still awaited. */
function joins(f) {
  if (!f.events.length) return h('span', { class: 'muted small' }, 'no events (runs on triggers)');
  if (!f.joins.length) return h('span', { class: 'small' }, 'waiting for ', f.events.map((e) => h('span', { class: 'event waiting' }, e)));
  return h('ul', { class: 'joins' }, f.joins.map((j) =>
    h('li', { 'data-key': j.key ?? '' },
      j.key !== null && j.key !== undefined && h('code', {}, j.key), j.key != null && ': ',
      Object.entries(j.ready).map(([name, n]) => h('span', { class: 'event ready', title: `${n} arrived` }, `✓ ${name}${n > 1 ? ` ×${n}` : ''}`)),
      j.waiting.map((name) => h('span', { class: 'event waiting', title: 'not arrived yet' }, `… ${name}`)))));
}
