// The twin page's "Desired state" card (types with a `commands:` section): desired next to
// reported values, what is pending, and a form that PUTs a desired value (docs/commands.md).
import { api, coalesce, errorBox, twinPath } from './api.js';
import { ago, fmt, h, localTime, replace, table } from './dom.js';

const REFRESH_MS = 300; // live state events arrive in bursts: read the view once per burst
const MAX_CATCH_UP = 3; // re-reads while the service has not yet stamped a reached value

const when = (iso) => h('span', { title: localTime(Date.parse(iso), true) }, ago(Date.parse(iso)));
const range = (s) =>
  s.min == null && s.max == null ? '' : `${s.min == null ? '−∞' : fmt(s.min)} … ${s.max == null ? '∞' : fmt(s.max)}`;

/**
 * The card for twin `id` of a type with `spec`; `current` holds the values on screen (kept live
 * by the page). Returns the element, `loaded` (a promise) and `refresh()`, to call when the
 * twin's state changes.
 */
export function desiredCard(id, spec, current, signal) {
  const settable = { ...spec.properties, ...spec.parameters };
  const names = Object.keys(settable);
  const body = h('div', { class: 'desired-body' }, h('p', { class: 'muted' }, 'loading…'));
  const topic = h('p', { class: 'muted small', id: 'desired-command' });
  let view = null;
  let catchUp = 0;

  const stateCell = (name) => {
    if (!(name in (view?.desired || {}))) return h('td', { class: 'muted', 'data-state': 'none' }, '—');
    if (view.pending.includes(name)) {
      return h('td', { 'data-state': 'pending' }, h('span', { class: 'badge pending' }, 'pending'), ' since ', when(view.since[name]));
    }
    const reached = view.reached[name];
    return h('td', { 'data-state': 'reached' }, h('span', { class: 'badge reached' }, '✓ reached'), reached && [' ', when(reached)]);
  };
  const draw = () => {
    const desired = view?.desired || {};
    replace(
      body,
      table('desired', ['Name', 'Desired', 'Reported', 'State', ''], names.map((name) =>
        h('tr', { 'data-name': name },
          h('th', { title: settable[name].description || '' }, name),
          h('td', { class: 'num desired-value' }, name in desired ? fmt(desired[name]) : '—'),
          h('td', { class: 'num reported-value' }, fmt(view?.reported?.[name] ?? current[name])),
          stateCell(name),
          h('td', { class: 'unit muted' }, settable[name].unit || '')))),
    );
    const cmd = view?.command;
    topic.replaceChildren(
      ...(cmd
        ? ['Last command ', h('code', { title: cmd.id }, cmd.id.slice(0, 8)), ' to ', h('code', {}, cmd.topic), ' ', when(cmd.ts),
            cmd.published ? ' · published' : ' · queued: it is sent when the broker is reachable']
        : [`Commands go to ${spec.commands.topic} (QoS ${spec.commands.qos}).`]),
    );
  };

  async function load() {
    try {
      view = await api(twinPath(id, '/desired'), { signal });
      draw();
      // the service stamps "reached" just after the state event: read once more to show when
      const unstamped = Object.keys(view.desired).some((n) => !view.pending.includes(n) && !view.reached[n]);
      catchUp = unstamped ? catchUp + 1 : 0;
      if (unstamped && catchUp <= MAX_CATCH_UP) refresh();
    } catch (err) {
      if (err.name !== 'AbortError') replace(body, errorBox(err));
    }
  }
  const refresh = coalesce(load, REFRESH_MS, signal);

  // ---- the form: one name and its desired value; the server checks and explains -------------
  const nameSelect = h('select', { name: 'name' }, names.map((n) => h('option', { value: n }, n)));
  const valueInput = h('input', { name: 'value', type: 'number', step: 'any', inputmode: 'decimal', required: true, class: 'desired-input' });
  const hint = h('span', { class: 'muted small hint' });
  const out = h('div', { class: 'desired-result', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, 'Set');
  const showHint = () => {
    const s = settable[nameSelect.value] || {};
    hint.textContent = [range(s), s.unit].filter(Boolean).join(' ');
  };
  nameSelect.addEventListener('change', showHint);
  showHint();
  const form = h(
    'form',
    {
      class: 'set-desired filters',
      onsubmit: async (e) => {
        e.preventDefault();
        out.replaceChildren();
        valueInput.removeAttribute('aria-invalid');
        const value = valueInput.value === '' ? null : Number(valueInput.value);
        button.disabled = true;
        try {
          view = await api(twinPath(id, '/desired'), { method: 'PUT', body: { values: { [nameSelect.value]: value } }, signal });
          draw();
          out.append(h('div', { class: 'notice', role: 'status' },
            `${nameSelect.value} = ${fmt(value)} `,
            view.command?.published ? `sent to ${view.command.topic}` : 'stored; it is sent when the broker is reachable'));
        } catch (err) {
          if (err.name === 'AbortError') return;
          if (err.field?.startsWith('values')) valueInput.setAttribute('aria-invalid', 'true');
          out.append(errorBox(err));
        } finally {
          button.disabled = false;
        }
      },
    },
    h('label', {}, 'Name', nameSelect),
    h('label', {}, 'Desired value', valueInput),
    button,
    hint,
  );

  const element = h('section', { class: 'card', id: 'desired' }, h('h2', {}, 'Desired state'), body, topic, form, out);
  return { element, refresh, loaded: load() };
}
