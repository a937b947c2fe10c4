// Switchboard chat: the demo server's page script. Plain JavaScript, no
// build step, nothing loaded from elsewhere.
//
// It speaks the seeds' chat protocol over `WS /ws/chat` (docs/chat.md):
// waits for `welcome`, sends `join_room`, then `chat_message`s; shows
// `room_joined` members, replayed history, `user_joined` / `user_left`
// notices and `error`s. When the socket closes it reconnects by itself with
// exponential backoff (0.5 s doubling to 15 s, with jitter) and says so.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    roomForm: $('room-form'),
    room: $('room'),
    nameForm: $('name-form'),
    name: $('name'),
    roomName: $('room-name'),
    messages: $('messages'),
    composer: $('composer'),
    message: $('message'),
    members: $('members'),
    memberCount: $('member-count'),
  };

  const ROOM_RE = /^[\p{L}\p{N}_.-]{1,40}$/u;
  const NAME_KEY = 'switchboard.chat.name';
  const BACKOFF_FIRST_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  // Entries kept on the page; older ones are removed.
  const MAX_ENTRIES = 500;

  const params = new URLSearchParams(location.search);
  let room = ROOM_RE.test(params.get('room') || '') ? params.get('room') : 'general';
  let name = (params.get('name') || sessionStorage.getItem(NAME_KEY) || '').trim();

  let ws = null;          // the current socket (null while disconnected)
  let joined = false;     // whether `room` is joined on the current socket
  let myIds = new Set();  // every connection id this page has had
  let attempt = 0;        // failed attempts since the last success
  let retryTimer = null;
  let everConnected = false;
  let lostNoticeShown = false;
  let firstJoin = true;   // first join of the current room on this page
  let pendingHistory = 0; // replayed messages still to come after room_joined
  const seen = new Set(); // ids of chat messages shown (replays repeat some)
  const outbox = [];      // messages typed while not connected
  const members = new Map(); // connection id -> name

  // ---- Rendering -------------------------------------------------------

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function append(li) {
    const stick = nearBottom();
    ui.messages.append(li);
    while (ui.messages.children.length > MAX_ENTRIES) {
      ui.messages.firstElementChild.remove();
    }
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function notice(text, kind = 'notice') {
    const li = document.createElement('li');
    li.className = `msg ${kind}`;
    li.textContent = text;
    append(li);
  }

  function divider(text) {
    const li = document.createElement('li');
    li.className = 'divider';
    const span = document.createElement('span');
    span.textContent = text;
    li.append(span);
    append(li);
  }

  function timeOf(ts) {
    const d = new Date(ts);
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function chatLine(msg) {
    const li = document.createElement('li');
    li.className = 'msg chat';
    if (myIds.has(msg.connection_id)) li.classList.add('mine');
    li.dataset.id = msg.id;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = msg.name;
    const when = document.createElement('time');
    when.className = 'when';
    when.dateTime = new Date(msg.ts).toISOString();
    when.textContent = timeOf(msg.ts);
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = msg.message;
    li.append(who, when, text);
    append(li);
  }

  function renderMembers() {
    ui.members.replaceChildren();
    const sorted = [...members.entries()].sort((a, b) => a[1].localeCompare(b[1]));
    for (const [id, who] of sorted) {
      const li = document.createElement('li');
      li.dataset.id = id;
      const label = document.createElement('span');
      label.className = 'who';
      label.textContent = who;
      li.append(label);
      if (myIds.has(id)) {
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = '(you)';
        li.append(you);
      }
      ui.members.append(li);
    }
    ui.memberCount.textContent = String(members.size);
  }

  function showRoom() {
    ui.roomName.textContent = room;
    ui.room.value = room;
    document.title = `#${room} · Switchboard chat`;
  }

  // ---- The socket --------------------------------------------------------

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = name ? `?name=${encodeURIComponent(name)}` : '';
    return `${scheme}//${location.host}/ws/chat${query}`;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (everConnected) {
      setStatus('reconnecting', 'Reconnecting…');
    } else {
      setStatus('connecting', 'Connecting…');
    }
    const sock = new WebSocket(socketUrl());
    ws = sock;
    sock.onmessage = (ev) => {
      if (sock !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      handle(msg);
    };
    sock.onclose = () => {
      if (sock !== ws) return; // replaced on purpose (rename)
      ws = null;
      joined = false;
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... up to 15 s,
    // each drawn from [half, full] so a restarted server is not hit by
    // every page at the same instant.
    const full = Math.min(BACKOFF_FIRST_MS * 2 ** attempt, BACKOFF_MAX_MS);
    const delay = Math.round(full / 2 + Math.random() * (full / 2));
    attempt += 1;
    const secs = Math.max(1, Math.round(delay / 1000));
    setStatus('reconnecting', `Reconnecting… (next try in ${secs} s)`);
    if (everConnected && !lostNoticeShown) {
      lostNoticeShown = true;
      notice('Connection lost: reconnecting…');
    }
    retryTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (!ws && retryTimer) connect();
  }

  function join() {
    joined = false;
    send({ type: 'join_room', room });
  }

  function flushOutbox() {
    while (outbox.length && joined) {
      if (!send({ type: 'chat_message', room, message: outbox[0] })) break;
      outbox.shift();
    }
  }

  function handle(msg) {
    switch (msg.type) {
      case 'welcome':
        myIds.add(msg.connection_id);
        name = msg.name;
        sessionStorage.setItem(NAME_KEY, name);
        if (document.activeElement !== ui.name) ui.name.value = name;
        attempt = 0;
        setStatus('connected', 'Connected');
        if (lostNoticeShown) notice('Reconnected');
        lostNoticeShown = false;
        everConnected = true;
        join();
        break;
      case 'room_joined':
        if (msg.room !== room) break;
        joined = true;
        members.clear();
        for (const m of msg.members) members.set(m.connection_id, m.name);
        renderMembers();
        pendingHistory = firstJoin ? msg.history : 0;
        if (pendingHistory > 0) divider('Recent messages');
        else if (firstJoin) joinedNotice();
        firstJoin = false;
        flushOutbox();
        break;
      case 'room_left':
        break;
      case 'user_joined':
        if (msg.room !== room) break;
        members.set(msg.connection_id, msg.name);
        renderMembers();
        notice(`${msg.name} joined`);
        break;
      case 'user_left':
        if (msg.room !== room) break;
        members.delete(msg.connection_id);
        renderMembers();
        notice(`${msg.name} left`);
        break;
      case 'chat_message':
        if (msg.room !== room) break;
        if (!seen.has(msg.id)) {
          seen.add(msg.id);
          chatLine(msg);
        }
        if (pendingHistory > 0 && --pendingHistory === 0) joinedNotice();
        break;
      case 'error':
        notice(msg.message, 'error');
        break;
      default:
        break;
    }
  }

  function joinedNotice() {
    notice(`You joined #${room} as ${name}`);
  }

  // ---- What the person does ---------------------------------------------

  ui.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.message.value.trim();
    if (!text) return;
    ui.message.value = '';
    if (joined && send({ type: 'chat_message', room, message: text })) return;
    outbox.push(text);
    notice('Not connected: your message will be sent when the connection is back.');
    reconnectNow();
  });

  ui.roomForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const next = ui.room.value.trim();
    if (!ROOM_RE.test(next)) {
      notice("Room names are 1 to 40 letters, digits, '-', '_' or '.'", 'error');
      return;
    }
    if (next === room) return;
    if (joined) send({ type: 'leave_room', room });
    room = next;
    firstJoin = true;
    pendingHistory = 0;
    outbox.length = 0;
    seen.clear();
    members.clear();
    renderMembers();
    ui.messages.replaceChildren();
    showRoom();
    const url = new URL(location.href);
    url.searchParams.set('room', room);
    history.replaceState(null, '', url);
    if (ws && ws.readyState === WebSocket.OPEN) join();
    ui.message.focus();
  });

  ui.nameForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const next = ui.name.value.trim();
    if (!next || next === name) return;
    name = next;
    sessionStorage.setItem(NAME_KEY, name);
    // The name belongs to the connection: open a new one under it.
    const old = ws;
    ws = null;
    joined = false;
    if (old) old.close(1000, 'renaming');
    notice(`You are now ${name}`);
    connect();
    ui.message.focus();
  });

  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') reconnectNow();
  });

  showRoom();
  if (name) ui.name.value = name;
  connect();
})();
