// Calls of the viewer's server (aop_tf/viewer/server.py). Every call carries the session token
// (from the page's address, ?token=...) as the X-Token header; errors become Error(message).

const token = new URLSearchParams(location.search).get('token') || '';

async function call(path, options = {}) {
  const headers = Object.assign({'X-Token': token}, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, {headers}));
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function json(path, options) {
  return (await call(path, options)).json();
}

export const api = {
  hasToken: () => token !== '',
  session: () => json('/api/session'),
  items: () => json('/api/items'),
  /** Uploads a File (or Blob with a name); resolves to the opened item. */
  open: (file) => json(`/api/items?name=${encodeURIComponent(file.name || 'upload')}`,
                       {method: 'POST', body: file}),
  /** Frame `index` of an item as an ImageBitmap. */
  frameImage: async (item, index) => {
    const blob = await (await call(`/api/items/${item}/frames/${index}.png`)).blob();
    return createImageBitmap(blob);
  },
  result: (item, index) => json(`/api/items/${item}/frames/${index}`),
  timeline: (item) => json(`/api/items/${item}/timeline`),
  queue: () => json('/api/queue'),
  save: (item, frame, landmarks) => json('/api/labels', {
    method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({item, frame, landmarks}),
  }),
};
