//! Lua scripts for the atomic presence steps.
//!
//! Every script is called with `KEYS[1]` = the cluster's `online` key, `ARGV[1]` = the key
//! prefix (`chatgate:{<cluster>}:`) and `ARGV[2]` = the calling node. All keys share the
//! `{<cluster>}` hash tag, so they live in one slot: `KEYS[1]` routes the call to that slot's
//! node in Redis Cluster, and the other keys, built from the prefix, are in the same slot.
//!
//! Key layout (P = prefix):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P ids` | zset | anonymous ids in use (member = score = id) |
//! | `P online` | set | users with at least one connection |
//! | `P u:<user>` | hash | node → connections of the user on that node |
//! | `P g:<group>` | hash | user → member connections, cluster-wide |
//! | `P gn:<group>` | hash | node → member connections on that node (group routing) |
//! | `P nu:<node>` | hash | user → connections on the node (0 = id reserved, not connected) |
//! | `P nm:<node>` | hash | `"<group> <user>"` → member connections on the node |
//! | `P lease:<node>` | string | the node's incarnation; expires after `CHAT_NODE_TTL_MS` |
//! | `P nodes` | set | nodes that may hold presence (the sweeper's list) |
//! | `P sweep:<node>` | string | lock taken by the node sweeping a dead one |
//! | `P epoch` | string | set by the first heartbeat on a store; missing means the store lost its data (or was never used): lookups are not trusted to say `offline`, no new anonymous ids |
//! | `P recovering` | string | set for one lease after a node found its lease or the epoch gone (Redis lost its data): no new anonymous ids, and lookups that find a user nowhere answer `unavailable`, until every live node has re-registered its users |
//! | `P info:<node>` | hash | what the node last reported about itself (`GET /api/nodes`) |
//!
//! Names cannot contain spaces, so `"<group> <user>"` splits unambiguously.

/// Shared helpers, prepended to every script.
const PRELUDE: &str = r#"
local P, node = ARGV[1], ARGV[2]
-- HINCRBY that removes the field once it reaches zero or less; returns the new value.
local function incr(key, field, by)
  local v = redis.call('HINCRBY', key, field, by)
  if v <= 0 then redis.call('HDEL', key, field) end
  return v
end
-- `d` connections of `uid` on node `n` joined (d > 0) or left (d < 0) group `g`.
-- Returns the user's remaining member connections in the group, cluster-wide.
local function member(n, g, uid, d)
  incr(P .. 'gn:' .. g, n, d)
  incr(P .. 'nm:' .. n, g .. ' ' .. uid, d)
  return incr(P .. 'g:' .. g, uid, d)
end
-- After a change to user `uid`: keep `online` and the anonymous id in step with whether
-- any node still has a connection. Returns 1 online, 0 offline.
local function settle(uid)
  if redis.call('EXISTS', P .. 'u:' .. uid) == 1 then
    redis.call('SADD', P .. 'online', uid)
    return 1
  end
  redis.call('SREM', P .. 'online', uid)
  if redis.call('HEXISTS', P .. 'nu:' .. node, uid) == 0 then
    redis.call('ZREM', P .. 'ids', uid)
  end
  return 0
end
"#;

/// A script's source and its SHA1 (what `EVALSHA` names).
#[derive(Debug)]
pub struct Lua {
    pub code: String,
    pub sha: String,
}

impl Lua {
    fn new(body: &str) -> Lua {
        let code = format!("{PRELUDE}{body}");
        let sha = redis::Script::new(&code).get_hash().to_owned();
        Lua { code, sha }
    }
}

macro_rules! script {
    ($name:ident, $body:expr) => {
        pub static $name: std::sync::LazyLock<Lua> = std::sync::LazyLock::new(|| Lua::new($body));
    };
}

// Reserves the smallest positive integer not in `ids` (binary search over ranks: the i-th
// smallest id equals i+1 exactly up to the first gap) and records it on this node with 0
// connections, so a sweep of this node frees it even if the connection never starts.
script!(
    ALLOCATE,
    r#"
if redis.call('EXISTS', P .. 'recovering') == 1 or redis.call('EXISTS', P .. 'epoch') == 0 then
  return redis.error_reply('RECOVERING presence is being rebuilt after a store restart')
end
local ids = P .. 'ids'
local lo, hi = 0, redis.call('ZCARD', ids)
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  local r = redis.call('ZRANGE', ids, mid, mid, 'WITHSCORES')
  if tonumber(r[2]) == mid + 1 then lo = mid + 1 else hi = mid end
end
local id = lo + 1
redis.call('ZADD', ids, id, id)
redis.call('HINCRBY', P .. 'nu:' .. node, id, 0)
return id
"#
);

// ARGV[3] = id: gives back a reservation whose connection never started.
script!(
    RELEASE_ID,
    r#"
local id = ARGV[3]
local nu = P .. 'nu:' .. node
if tonumber(redis.call('HGET', nu, id) or '-1') == 0 then redis.call('HDEL', nu, id) end
settle(id)
return 1
"#
);

// ARGV[3] = user, ARGV[4] = connection delta, ARGV[5] = '1' if the id is anonymous.
// Returns 1 online, 0 offline, 2 online but an anonymous id also held by another node.
script!(
    ADJUST_USER,
    r#"
local uid, d = ARGV[3], tonumber(ARGV[4])
local uk = P .. 'u:' .. uid
if d ~= 0 then
  incr(uk, node, d)
  local nu = P .. 'nu:' .. node
  local v = redis.call('HINCRBY', nu, uid, d)
  if v <= 0 then redis.call('HDEL', nu, uid) end
end
local online = settle(uid)
if online == 1 and ARGV[5] == '1' then
  redis.call('ZADD', P .. 'ids', uid, uid)
  if redis.call('HLEN', uk) > 1 then return 2 end
end
return online
"#
);

// One connection of ARGV[3] ended after being a member of groups ARGV[4..].
// Returns the groups the user left cluster-wide.
script!(
    DISCONNECT,
    r#"
local uid = ARGV[3]
local left = {}
for i = 4, #ARGV do
  if member(node, ARGV[i], uid, -1) <= 0 then table.insert(left, ARGV[i]) end
end
incr(P .. 'u:' .. uid, node, -1)
incr(P .. 'nu:' .. node, uid, -1)
settle(uid)
return left
"#
);

// ARGV[3] = group, ARGV[4] = user, ARGV[5] = delta. Returns the user's member connections
// in the group before and after.
script!(
    ADJUST_MEMBER,
    r#"
local d = tonumber(ARGV[5])
local after = member(node, ARGV[3], ARGV[4], d)
local before = after - d
if after < 0 then after = 0 end
return {before, after}
"#
);

// ARGV[3] = incarnation, ARGV[4] = lease ms, ARGV[5] = '1' if this node held a lease
// before. Returns 1 if the lease was ours and alive. A lease found missing by a node that
// held one means the store lost its data (or this node was presumed dead): allocation pauses
// for one lease, time for every live node's next heartbeat to re-register its users.
script!(
    HEARTBEAT,
    r#"
local lk = P .. 'lease:' .. node
local cur = redis.call('GET', lk)
redis.call('SET', lk, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', P .. 'nodes', node)
-- The epoch marks a store that has not lost its data since the cluster first used it.
local lost = redis.call('SET', P .. 'epoch', ARGV[3], 'NX') and ARGV[5] == '1'
if lost then redis.call('SET', P .. 'recovering', node, 'NX', 'PX', ARGV[4]) end
if cur == ARGV[3] then return 1 end
if ARGV[5] == '1' then redis.call('SET', P .. 'recovering', node, 'NX', 'PX', ARGV[4]) end
return 0
"#
);

// Removes everything node ARGV[3] holds: its users' connections (freeing ids of users left
// with none), its group memberships, its lease and its place in `nodes`. Unless ARGV[4] is
// '1' (a node cleaning up its own past), refuses while the node's lease exists, so a live
// node is never touched. Returns nil if refused, else a flat list group1, user1, ... of
// users who left groups cluster-wide.
script!(
    SWEEP,
    r#"
local dead = ARGV[3]
if ARGV[4] ~= '1' and redis.call('EXISTS', P .. 'lease:' .. dead) == 1 then return false end
local left = {}
local nm = P .. 'nm:' .. dead
local entries = redis.call('HGETALL', nm)
for i = 1, #entries, 2 do
  local key, cnt = entries[i], tonumber(entries[i + 1])
  local sp = string.find(key, ' ', 1, true)
  if sp then
    local g, uid = string.sub(key, 1, sp - 1), string.sub(key, sp + 1)
    incr(P .. 'gn:' .. g, dead, -cnt)
    if incr(P .. 'g:' .. g, uid, -cnt) <= 0 then
      table.insert(left, g)
      table.insert(left, uid)
    end
  end
end
redis.call('DEL', nm)
local nu = P .. 'nu:' .. dead
local users = redis.call('HGETALL', nu)
redis.call('DEL', nu)
for i = 1, #users, 2 do
  local uid = users[i]
  local uk = P .. 'u:' .. uid
  redis.call('HDEL', uk, dead)
  if redis.call('EXISTS', uk) == 0 then
    redis.call('SREM', P .. 'online', uid)
    redis.call('ZREM', P .. 'ids', uid)
  end
end
redis.call('SREM', P .. 'nodes', dead)
if ARGV[4] == '1' then redis.call('DEL', P .. 'lease:' .. dead) end
return left
"#
);

/// Every script, for `SCRIPT LOAD` after a `NOSCRIPT` (a restarted Redis forgets them).
pub fn all() -> [&'static Lua; 7] {
    [&ALLOCATE, &RELEASE_ID, &ADJUST_USER, &DISCONNECT, &ADJUST_MEMBER, &HEARTBEAT, &SWEEP]
}
