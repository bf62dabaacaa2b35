// Types: the list, one type's spec and versions, and an editor (JSON or YAML) that saves with
// PUT /api/types/{name} and shows the server's error in place.
import { api, errorBox, qs } from '../api.js';
import { append, h, link, navigate, table } from '../dom.js';

const TEMPLATE = { description: '', properties: { temperature: { unit: 'degC' } }, parameters: {}, derived: {} };

export async function renderList(root, { signal }) {
  const types = await api('api/types', { signal });
  root.append(
    h('h1', {}, 'Types'),
    types.length
      ? table(
          'types',
          ['Type', 'Version', 'Twins', 'Description'],
          types.map((t) =>
            h(
              'tr',
              { 'data-type': t.name },
              h('td', {}, link('#/types/', t.name)),
              h('td', {}, `v${t.version}`),
              h('td', {}, h('a', { href: `#/fleet?${qs({ type: t.name })}` }, String(t.twins))),
              h('td', {}, t.description),
            ),
          ),
        )
      : h('p', { class: 'muted' }, 'No types yet.'),
  );
  const name = h('input', { name: 'name', placeholder: 'room', required: true, autocomplete: 'off' });
  root.append(
    h('section', { class: 'card' },
      h('h2', {}, 'Declare a type'),
      h('label', { class: 'block' }, 'Name ', name),
      editor(JSON.stringify(TEMPLATE, null, 2), 'Declare', () => name.value.trim(), signal)),
  );
}

export async function renderType(root, { args: [name], params, signal }) {
  const version = params.get('version');
  const type = await api(`api/types/${encodeURIComponent(name)}`, { query: { version }, signal });
  const saved = params.get('saved');
  append(
    root,
    h('p', { class: 'crumbs' }, h('a', { href: '#/types' }, 'Types'), ' › ', name),
    h('h1', {}, name, h('span', { class: 'muted' }, ` v${type.version}`)),
    saved &&
      h('div', { class: 'notice', role: 'status' },
        saved === 'same' ? 'No change: the spec equals the latest version.' : `Saved as version ${saved}.`),
    h('p', { class: 'meta' },
      'versions: ',
      type.versions.flatMap((v, i) => [
        i ? ' ' : '',
        v === type.version ? h('strong', {}, `v${v}`) : h('a', { href: `#/types/${encodeURIComponent(name)}?version=${v}` }, `v${v}`),
      ]),
      ` · created ${type.created.replace('T', ' ').replace('Z', ' UTC')}`,
      ' · ', h('a', { href: `#/fleet?${qs({ type: name })}` }, 'twins of this type')),
    h('p', { class: 'muted small' }, 'names: ', type.columns.join(', ')),
    type.version !== type.latest &&
      h('p', { class: 'notice' }, `This is version ${type.version} of ${type.latest}; saving it makes it the newest.`),
    h('section', { class: 'card' },
      h('h2', {}, 'Spec (JSON or YAML)'),
      h('p', { class: 'muted small' }, 'A change makes a new version; all twins of the type run it from then on, keeping their values.'),
      editor(JSON.stringify(type.spec, null, 2), 'Save', () => name, signal)),
  );
}

/** The content type of a spec text: JSON when it starts with '{', YAML otherwise. */
export const specType = (text) => (text.trimStart().startsWith('{') ? 'application/json' : 'application/yaml');

/** A textarea holding a spec (JSON, or YAML) and a button that PUTs it; errors appear under it. */
function editor(text, label, nameOf, signal) {
  const area = h('textarea', { name: 'spec', rows: String(Math.min(30, text.split('\n').length + 2)), spellcheck: 'false', value: text });
  const format = h('span', { class: 'muted small format' });
  const showFormat = () => {
    format.textContent = specType(area.value) === 'application/json' ? 'sent as JSON' : 'sent as YAML';
  };
  area.addEventListener('input', showFormat);
  showFormat();
  const out = h('div', { class: 'editor-result' });
  const button = h('button', { type: 'submit' }, label);
  return h(
    'form',
    {
      class: 'editor',
      onsubmit: async (e) => {
        e.preventDefault();
        const name = nameOf();
        out.replaceChildren();
        if (!name) {
          out.append(errorBox({ message: 'the type needs a name', field: 'name', fix: 'a name like room or pump_v2' }));
          return;
        }
        button.disabled = true;
        try {
          // the raw text goes to the server, so its JSON errors (with line and column) show here
          const result = await api(`api/types/${encodeURIComponent(name)}`, { method: 'PUT', body: area.value, type: specType(area.value), signal });
          navigate(`#/types/${encodeURIComponent(name)}?saved=${result.changed ? result.version : 'same'}`);
        } catch (err) {
          if (err.name !== 'AbortError') out.append(errorBox(err));
        } finally {
          button.disabled = false;
        }
      },
    },
    area,
    h('div', { class: 'actions' }, button, ' ', format),
    out,
  );
}
