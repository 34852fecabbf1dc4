// RankMySteps leaderboard page. No framework; every text is set with textContent (never
// parsed as HTML), and nothing is inline (the server's Content-Security-Policy forbids it).
'use strict';

(function () {
  const K = 100;
  const SVG = 'http://www.w3.org/2000/svg';
  const W = 640;
  const H = 220;
  const PAD_BOTTOM = 22;
  const $ = (id) => document.getElementById(id);

  const state = {
    day: null, // the day shown, YYYY-MM-DD
    followLatest: true, // no day chosen: follow the latest day with results
    user: null, // the pinned user (lowercase UUID)
    days: [],
    daysKey: '',
    es: null,
    rows: new Map(), // user -> <tr> of the top-k table
    top: null,
    standing: null,
    histogram: null,
    histTimer: null,
    histAt: 0,
    lastUpdate: null,
    epoch: null,
    storeOk: true,
    streamOpen: false,
  };

  const nf = new Intl.NumberFormat('en-US');
  const fmt = (n) => nf.format(n);

  async function api(path) {
    let r;
    try {
      r = await fetch(path, { headers: { Accept: 'application/json' } });
    } catch (e) {
      const err = new Error('the server cannot be reached');
      err.status = 0;
      throw err;
    }
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      body = null;
    }
    if (!r.ok) {
      const err = new Error((body && body.detail) || 'HTTP ' + r.status);
      err.status = r.status;
      err.code = body && body.error;
      throw err;
    }
    return body;
  }

  function show(el, on) {
    el.hidden = !on;
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function notice(text) {
    const n = $('notice');
    setText(n, text || '');
    show(n, !!text);
  }

  function setConn() {
    const pill = $('conn');
    let s;
    let label;
    if (!state.streamOpen) {
      s = state.es ? 'reconnecting' : 'connecting';
      label = s;
    } else if (!state.storeOk) {
      s = 'reconnecting';
      label = 'reconnecting · store unreachable';
    } else {
      s = 'live';
      label = 'live';
    }
    pill.dataset.state = s;
    setText(pill, label);
  }

  function tick() {
    const el = $('updated');
    if (state.lastUpdate === null) {
      setText(el, '');
      return;
    }
    const s = Math.max(0, Math.round((Date.now() - state.lastUpdate) / 1000));
    setText(el, 'updated ' + s + ' s ago');
  }

  function updateUrl() {
    const p = new URLSearchParams();
    if (state.day && !state.followLatest) p.set('day', state.day);
    if (state.user) p.set('user', state.user);
    const q = p.toString();
    history.replaceState(null, '', q ? '?' + q : location.pathname);
  }

  // ---- days ------------------------------------------------------------------------------

  function renderDays(days) {
    state.days = days;
    const key = JSON.stringify(days) + '|' + state.day;
    if (key === state.daysKey) return;
    state.daysKey = key;
    const sel = $('day');
    while (sel.firstChild) sel.removeChild(sel.firstChild);
    const list = days.slice().reverse();
    if (state.day && !days.some((d) => d.day === state.day)) {
      list.unshift({ day: state.day, final: false, missing: true });
    }
    for (const d of list) {
      const o = document.createElement('option');
      o.value = d.day;
      o.textContent = d.day + (d.missing ? ' · no results' : d.final ? ' · final' : ' · live');
      o.dataset.final = d.final ? 'true' : 'false';
      if (d.day === state.day) o.selected = true;
      sel.appendChild(o);
    }
    if (list.length === 0) {
      const o = document.createElement('option');
      o.textContent = 'no results yet';
      sel.appendChild(o);
    }
    sel.disabled = list.length === 0;
  }

  async function loadDays() {
    try {
      const d = await api('/api/days');
      if (!state.day && d.latest) state.day = d.latest;
      renderDays(d.days);
      return true;
    } catch (e) {
      notice('Cannot load the days: ' + e.message);
      return false;
    }
  }

  async function chooseDay(day, explicit) {
    if (explicit) state.followLatest = false;
    if (day === state.day && state.top && state.top.day === day) return;
    state.day = day;
    state.daysKey = '';
    renderDays(state.days);
    clearTop();
    updateUrl();
    await Promise.all([loadTop(), loadHistogram(), state.user ? loadStanding(true) : null]);
    connect();
  }

  // ---- top-k -----------------------------------------------------------------------------

  function clearTop() {
    const tbody = $('top').tBodies[0];
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    state.rows.clear();
    state.top = null;
  }

  async function loadTop() {
    if (!state.day) return;
    try {
      renderTop(await api('/api/days/' + state.day + '/top?k=' + K));
      notice('');
    } catch (e) {
      if (e.status === 400 && e.code === 'invalid_k') {
        // Fewer rows stored than K: take them all.
        renderTop(await api('/api/days/' + state.day + '/top'));
      } else if (e.status === 404) {
        notice('No results for ' + state.day + '.');
      } else {
        notice('Cannot load the top: ' + e.message);
      }
    }
  }

  function makeRow(cls) {
    const tr = document.createElement('tr');
    for (const c of ['num rank', 'user mono', 'num steps']) {
      const td = document.createElement('td');
      td.className = c;
      tr.appendChild(td);
    }
    if (cls) tr.className = cls;
    return tr;
  }

  function renderTop(t) {
    if (!t || t.day !== state.day) return;
    state.top = t;
    const rows = t.top.slice(0, K);
    setText($('board-title'), 'Top ' + rows.length + ' · ' + t.day);
    const badge = $('final');
    setText(badge, t.final ? 'final' : 'live');
    badge.dataset.final = t.final ? 'true' : 'false';
    setText($('summary'), fmt(t.users) + (t.users === 1 ? ' user' : ' users') + ' ranked');
    show($('empty'), rows.length === 0);
    const tbody = $('top').tBodies[0];
    const seen = new Set();
    rows.forEach((e, i) => {
      let tr = state.rows.get(e.user);
      const fresh = !tr;
      if (fresh) {
        tr = makeRow();
        tr.dataset.user = e.user;
        state.rows.set(e.user, tr);
      }
      const changed = !fresh && tr.dataset.steps !== String(e.steps);
      tr.dataset.rank = String(e.rank);
      tr.dataset.steps = String(e.steps);
      setText(tr.cells[0], String(e.rank));
      setText(tr.cells[1], e.user);
      setText(tr.cells[2], fmt(e.steps));
      tr.classList.toggle('me', e.user === state.user);
      if (changed) {
        tr.classList.remove('changed');
        void tr.offsetWidth; // restart the highlight
        tr.classList.add('changed');
      }
      const at = tbody.children[i];
      if (at !== tr) tbody.insertBefore(tr, at || null);
      seen.add(e.user);
    });
    for (const [u, tr] of state.rows) {
      if (!seen.has(u)) {
        tr.remove();
        state.rows.delete(u);
      }
    }
  }

  // ---- histogram -------------------------------------------------------------------------

  async function loadHistogram() {
    if (!state.day) return;
    state.histAt = Date.now();
    try {
      const h = await api('/api/days/' + state.day + '/histogram');
      if (h.day === state.day) {
        state.histogram = h;
        renderChart();
      }
    } catch (e) {
      state.histogram = null;
      renderChart();
    }
  }

  // At most one histogram read every 3 s while the top moves.
  function scheduleHistogram() {
    if (state.histTimer) return;
    const wait = Math.max(0, 3000 - (Date.now() - state.histAt));
    state.histTimer = setTimeout(() => {
      state.histTimer = null;
      loadHistogram();
    }, wait);
  }

  function svg(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const k in attrs) el.setAttribute(k, String(attrs[k]));
    return el;
  }

  function renderChart() {
    const chart = $('chart');
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    const h = state.histogram;
    if (!h || h.bins.length === 0) {
      setText($('chart-caption'), 'No distribution yet.');
      return;
    }
    const bins = h.bins;
    const max = Math.max(1, ...bins.map((b) => b.users));
    const bw = W / bins.length;
    const plot = H - PAD_BOTTOM;
    const mine = state.standing && !state.standing.error && state.standing.day === h.day
      ? state.standing.steps : null;
    chart.appendChild(svg('line', { x1: 0, y1: plot + 0.5, x2: W, y2: plot + 0.5, class: 'axis' }));
    bins.forEach((b, i) => {
      const bh = b.users === 0 ? 0 : Math.max(1.5, (b.users / max) * (plot - 18));
      const isMine = mine !== null && mine >= b.lo && mine <= b.hi;
      const r = svg('rect', {
        x: (i * bw + 1).toFixed(2),
        y: (plot - bh).toFixed(2),
        width: Math.max(1, bw - 2).toFixed(2),
        height: bh.toFixed(2),
        class: isMine ? 'bar mine' : 'bar',
        'data-lo': b.lo,
        'data-hi': b.hi,
        'data-users': b.users,
      });
      const title = document.createElementNS(SVG, 'title');
      title.textContent = fmt(b.lo) + '–' + fmt(b.hi) + ' steps: ' + fmt(b.users) + (b.users === 1 ? ' user' : ' users');
      r.appendChild(title);
      chart.appendChild(r);
    });
    const label = (x, text, anchor) => {
      const t = svg('text', { x: x, y: H - 6, class: 'tick', 'text-anchor': anchor });
      t.textContent = text;
      chart.appendChild(t);
    };
    label(2, '0', 'start');
    label(W - 2, fmt(bins[bins.length - 1].hi) + ' steps', 'end');
    if (mine !== null) {
      const span = bins[bins.length - 1].hi + 1;
      const x = Math.min(W - 1, Math.max(1, (mine / span) * W));
      chart.appendChild(svg('line', { x1: x, y1: 12, x2: x, y2: plot, class: 'marker' }));
      const t = svg('text', {
        x: x, y: 10, class: 'marker-label', 'text-anchor': x > W - 40 ? 'end' : x < 40 ? 'start' : 'middle',
      });
      t.textContent = 'you';
      chart.appendChild(t);
    }
    setText($('chart-caption'), fmt(h.users) + ' users in ' + bins.length + ' bars of ' + fmt(h.width) +
      ' steps' + (mine !== null ? '; the highlighted bar is yours' : ''));
  }

  // ---- the pinned user -------------------------------------------------------------------

  function userError(text) {
    const el = $('user-error');
    setText(el, text || '');
    show(el, !!text);
    $('user').setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  async function pin(text) {
    const raw = text.trim();
    if (!raw) {
      userError('Paste your user id (a UUID) first.');
      return false;
    }
    if (!state.day) {
      userError('There are no results yet.');
      return false;
    }
    try {
      const s = await api('/api/days/' + state.day + '/standing/' + encodeURIComponent(raw) + '?neighbours=3');
      userError('');
      state.user = s.user;
      renderStanding(s);
    } catch (e) {
      if (e.status === 404 && e.code === 'unknown_user') {
        userError('');
        state.user = raw.toLowerCase();
        renderStanding({ error: e.code, detail: e.message, day: state.day, user: state.user });
      } else {
        userError(e.message);
        return false;
      }
    }
    $('user').value = state.user;
    show($('unpin'), true);
    updateUrl();
    for (const [u, tr] of state.rows) tr.classList.toggle('me', u === state.user);
    loadHistory();
    connect();
    return true;
  }

  function unpin() {
    state.user = null;
    state.standing = null;
    $('user').value = '';
    userError('');
    show($('pinned'), false);
    show($('unpin'), false);
    for (const tr of state.rows.values()) tr.classList.remove('me');
    updateUrl();
    renderChart();
    connect();
  }

  async function loadStanding(quiet) {
    if (!state.user || !state.day) return;
    try {
      renderStanding(await api('/api/days/' + state.day + '/standing/' + state.user + '?neighbours=3'));
    } catch (e) {
      if (e.status === 404) renderStanding({ error: e.code, detail: e.message, day: state.day, user: state.user });
      else if (!quiet) userError(e.message);
    }
  }

  function renderStanding(s) {
    if (!s || s.day !== state.day || s.user !== state.user) return;
    state.standing = s;
    show($('pinned'), true);
    setText($('me-user'), s.user);
    const missing = !!s.error;
    show($('me-missing'), missing);
    show($('me-body'), !missing);
    if (missing) {
      setText($('me-missing'), 'No steps on ' + s.day + ' yet. This updates by itself when they arrive.');
      renderChart();
      return;
    }
    setText($('me-rank'), '#' + s.rank);
    setText($('me-of'), ' of ' + fmt(s.users) + (s.final ? ' · final' : ''));
    setText($('me-steps'), fmt(s.steps));
    setText($('me-gap-up'), s.gap_up === undefined ? 'you are first' : fmt(s.gap_up) + ' steps');
    setText($('me-gap-down'), s.gap_down === undefined ? 'no one below' : fmt(s.gap_down) + ' steps');
    const tbody = $('neighbours').tBodies[0];
    const list = s.above.concat([{ rank: s.rank, user: s.user, steps: s.steps, me: true }], s.below);
    while (tbody.children.length > list.length) tbody.removeChild(tbody.lastChild);
    list.forEach((e, i) => {
      let tr = tbody.children[i];
      if (!tr) {
        tr = makeRow();
        tbody.appendChild(tr);
      }
      tr.dataset.user = e.user;
      tr.dataset.rank = String(e.rank);
      tr.dataset.steps = String(e.steps);
      tr.classList.toggle('me', !!e.me);
      setText(tr.cells[0], String(e.rank));
      setText(tr.cells[1], e.me ? e.user + ' (you)' : e.user);
      setText(tr.cells[2], fmt(e.steps));
    });
    renderChart();
  }

  async function loadHistory() {
    if (!state.user) return;
    const tbody = $('history').tBodies[0];
    let h;
    try {
      h = await api('/api/users/' + state.user + '/history');
    } catch (e) {
      while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
      setText($('history-empty'), e.status === 404 ? 'No days with steps yet.' : 'Cannot load the history: ' + e.message);
      show($('history-empty'), true);
      return;
    }
    show($('history-empty'), false);
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    for (const d of h.days) {
      const tr = document.createElement('tr');
      tr.dataset.day = d.day;
      const day = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'link';
      b.textContent = d.day + (d.final ? '' : ' (live)');
      b.addEventListener('click', () => chooseDay(d.day, true));
      day.appendChild(b);
      const steps = document.createElement('td');
      steps.className = 'num';
      steps.textContent = fmt(d.steps);
      const rank = document.createElement('td');
      rank.className = 'num';
      rank.textContent = '#' + d.rank + ' of ' + fmt(d.users);
      tr.append(day, steps, rank);
      tbody.appendChild(tr);
    }
  }

  // ---- live updates ----------------------------------------------------------------------

  function connect() {
    if (state.es) state.es.close();
    state.streamOpen = false;
    const p = new URLSearchParams();
    if (state.day) p.set('day', state.day);
    if (state.user) p.set('user', state.user);
    const es = new EventSource('/api/events?' + p.toString());
    state.es = es;
    setConn();
    const on = (name, f) => es.addEventListener(name, (ev) => {
      if (state.es !== es) return;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      f(data);
    });
    es.onopen = () => {
      if (state.es !== es) return;
      state.streamOpen = true;
      setConn();
    };
    es.onerror = () => {
      if (state.es !== es) return;
      state.streamOpen = false;
      setConn();
    };
    on('status', (s) => {
      state.streamOpen = true;
      state.storeOk = s.store === 'ok';
      const epoch = s.epoch === null ? null : String(s.epoch) + '/' + String(s.writing);
      if (state.storeOk && epoch !== state.epoch) {
        state.epoch = epoch;
        state.lastUpdate = Date.now();
        tick();
      }
      setConn();
    });
    on('days', (d) => {
      const had = state.day;
      if (state.followLatest && d.latest && d.latest !== state.day) {
        renderDays(d.days);
        chooseDay(d.latest, false);
        return;
      }
      renderDays(d.days);
      if (!had && state.day) connect();
      if (state.user) loadHistory();
    });
    on('top', (t) => {
      renderTop(t);
      state.lastUpdate = Date.now();
      tick();
      scheduleHistogram();
    });
    on('standing', (s) => renderStanding(s));
    on('resync', () => {
      loadTop();
      loadStanding(true);
    });
  }

  // ---- start -----------------------------------------------------------------------------

  async function start() {
    const params = new URLSearchParams(location.search);
    const day = params.get('day');
    const user = params.get('user');
    if (day) {
      state.day = day;
      state.followLatest = false;
    }
    $('day').addEventListener('change', (e) => chooseDay(e.target.value, true));
    $('user-form').addEventListener('submit', (e) => {
      e.preventDefault();
      pin($('user').value);
    });
    $('unpin').addEventListener('click', unpin);
    setInterval(tick, 1000);
    await loadDays();
    if (state.day) await Promise.all([loadTop(), loadHistogram()]);
    if (user) $('user').value = user;
    if (!(user && (await pin(user)))) connect();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
