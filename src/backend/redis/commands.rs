//! Building and sending this node's Redis commands: key names, script calls, and the
//! pipeline that reloads scripts on `NOSCRIPT`. Command building is pure, so it is
//! unit-tested and benched without a server.

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, ServerErrorKind, Value};

use super::scripts;
use crate::backend::BackendError;

/// One presence write: a script call in the writer's pipeline.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Reserve the smallest free anonymous id on this node.
    Allocate,
    /// Give back a reservation that never connected.
    ReleaseId(&'a str),
    /// `delta` connections of `user` on this node (`anon`: the id is allocator-owned).
    AdjustUser { user: &'a str, delta: i64, anon: bool },
    /// One connection of `user` ended while a member of `groups`.
    Disconnect { user: &'a str, groups: &'a [Box<str>] },
    /// `delta` member connections of `user` in `group` on this node.
    AdjustMember { group: &'a str, user: &'a str, delta: i64 },
}

/// This node's key names (see `scripts` for the layout) and script calls.
#[derive(Debug, Clone)]
pub struct Commands {
    pub(super) prefix: String,
    pub(super) online: String,
    node: String,
}

impl Commands {
    pub fn new(cluster: &str, node: &str) -> Self {
        let prefix = format!("chatgate:{{{cluster}}}:");
        Commands { online: format!("{prefix}online"), prefix, node: node.to_owned() }
    }

    pub(super) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// A key of the cluster as a whole (`nodes`, `epoch`, `recovering`).
    pub(super) fn key_of(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `EVALSHA` of `script` with the common key and arguments.
    pub(super) fn eval(&self, script: &scripts::Lua) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&script.sha).arg(1).arg(&self.online).arg(&self.prefix).arg(&self.node);
        c
    }

    /// The command for one write.
    pub fn write(&self, w: Write<'_>) -> Cmd {
        match w {
            Write::Allocate => self.eval(&scripts::ALLOCATE),
            Write::ReleaseId(id) => {
                let mut c = self.eval(&scripts::RELEASE_ID);
                c.arg(id);
                c
            }
            Write::AdjustUser { user, delta, anon } => {
                let mut c = self.eval(&scripts::ADJUST_USER);
                c.arg(user).arg(delta).arg(if anon { "1" } else { "0" });
                c
            }
            Write::Disconnect { user, groups } => {
                let mut c = self.eval(&scripts::DISCONNECT);
                c.arg(user);
                for g in groups {
                    c.arg(&**g);
                }
                c
            }
            Write::AdjustMember { group, user, delta } => {
                let mut c = self.eval(&scripts::ADJUST_MEMBER);
                c.arg(group).arg(user).arg(delta);
                c
            }
        }
    }

    /// One pipeline for a batch of writes; per-command errors come back as values.
    pub fn pipeline<'a>(&self, writes: impl IntoIterator<Item = Write<'a>>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for w in writes {
            pipe.add_command(self.write(w));
        }
        pipe
    }
}

/// A reply that is not what the script returns.
pub(super) fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T, BackendError> {
    T::from_redis_value(v).map_err(|e| BackendError::presence(format!("unexpected reply: {e}")))
}

/// One script call, loading scripts on `NOSCRIPT`.
pub(super) async fn one<T: redis::FromRedisValue>(conn: &ConnectionManager, cmd: Cmd) -> Result<T, BackendError> {
    let v = exec(conn, std::slice::from_ref(&cmd)).await?.pop().unwrap_or(Value::Nil);
    match v {
        Value::ServerError(e) => Err(RedisError::from(e).into()),
        v => parse(v),
    }
}

/// Sends `cmds` as one pipeline. Per-command server errors come back as
/// `Value::ServerError`; a `NOSCRIPT` (Redis restarted and forgot the scripts) loads them all
/// and re-sends just those commands (a `NOSCRIPT` command did not run).
pub(super) async fn exec(conn: &ConnectionManager, cmds: &[Cmd]) -> Result<Vec<Value>, RedisError> {
    let mut conn = conn.clone();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let mut values: Vec<Value> = pipe.query_async(&mut conn).await?;
    let missing: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript)))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        let mut load = redis::pipe();
        for s in scripts::all() {
            load.cmd("SCRIPT").arg("LOAD").arg(&s.code);
        }
        let _: Vec<String> = load.query_async(&mut conn).await?;
        let mut retry = redis::pipe();
        retry.ignore_errors();
        for &i in &missing {
            retry.add_command(cmds[i].clone());
        }
        let again: Vec<Value> = retry.query_async(&mut conn).await?;
        for (i, v) in missing.into_iter().zip(again) {
            values[i] = v;
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn writes_are_evalsha_with_slot_key_prefix_and_node() {
        let c = Commands::new("prod", "n1");
        let got = args(&c.write(Write::AdjustMember { group: "room", user: "17", delta: -1 }));
        assert_eq!(
            got,
            [
                "EVALSHA",
                &scripts::ADJUST_MEMBER.sha,
                "1",
                "chatgate:{prod}:online",
                "chatgate:{prod}:",
                "n1",
                "room",
                "17",
                "-1"
            ]
        );
        let groups: Vec<Box<str>> = vec!["a".into(), "b".into()];
        let got = args(&c.write(Write::Disconnect { user: "5", groups: &groups }));
        assert_eq!(&got[6..], ["5", "a", "b"]);
        assert_eq!(&args(&c.write(Write::AdjustUser { user: "5", delta: 1, anon: true }))[6..], ["5", "1", "1"]);
        assert_eq!(args(&c.write(Write::Allocate)).len(), 6);
        assert_eq!(c.pipeline([Write::Allocate, Write::ReleaseId("3")]).cmd_iter().count(), 2);
    }

    #[test]
    fn every_key_shares_one_hash_tag() {
        let c = Commands::new("x.y", "n");
        for k in [c.key("u", "1"), c.key("gn", "g"), c.online.clone()] {
            assert!(k.starts_with("chatgate:{x.y}:"), "{k}");
        }
    }
}
