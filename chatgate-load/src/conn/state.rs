//! A connection's life as an explicit state machine: every change of [`State`] is a row of
//! [`State::next`], which is pure so that the table is tested here on its own.
//!
//! ```text
//! Connected ─JoinsSent─▶ Joining ─last answer, or timeout─▶ Ready
//!     └─────────── JoinsSent (no groups) ───────────────────┘  │ Running
//!                                                              ▼
//!          Listening ◀── nothing (more) to send, or Draining ── Sending
//!          (also from Ready: Draining, or Running after a refused join)
//!
//! any but Broken ─Closing─▶ Closing { sent: false } ─CloseSent─▶ Closing { sent: true }
//! any ─Failed─▶ Broken: the next poll ends the connection
//! ```
//!
//! A connection counts as set up (`ctx.setup`) exactly once, when it leaves `Connected` or
//! `Joining`: that is [`Effect::Settle`] (a connection that ends before is counted by its task). The coordinator only starts the run once every
//! connection is set up, so in practice `Running` never meets a connection still joining;
//! if it did, that connection would not send (as a late join cannot make it a sender).

use crate::ctx::Phase;

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Welcomed; no `join` sent yet.
    Connected,
    /// `join`s sent: `pending` of them unanswered (never 0), all due by clock ns
    /// `deadline`; `refused` once one was refused.
    Joining { pending: usize, deadline: u64, refused: bool },
    /// Set up; waiting for the run. `may_send`: every join succeeded.
    Ready { may_send: bool },
    /// The run is on and this connection sends (on its schedule, or with `--rate max` as
    /// its window allows).
    Sending,
    /// Only reads: a receiver, a sender with nothing (more) to send, or the run is draining.
    Listening,
    /// The run is closing: our close frame is on its way (`sent` once written); reading
    /// goes on until the server closes.
    Closing { sent: bool },
    /// A write failed; the next poll ends the connection with this reason.
    Broken(String),
}

/// What happened to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The `join` frames went out: `pending` of them, to be answered by `deadline`.
    JoinsSent { pending: usize, deadline: u64 },
    /// A join was answered: `joined` (ok) or an error.
    JoinAnswered { ok: bool },
    /// The join deadline passed with joins unanswered.
    JoinTimeout,
    /// The coordinator moved the run to this phase.
    Phase(Phase),
    /// A sender has nothing (more) to send: no peer, or its schedule is over.
    NothingToSend,
    /// Our close frame was written.
    CloseSent,
    /// Writing failed; why.
    Failed(String),
}

/// What the connection must do besides changing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Count this connection as set up (`ctx.setup.done()`).
    Settle,
    /// Set up the send schedule (and go to `Listening` if there is nothing to send).
    StartSending,
}

impl State {
    /// Applies `input`; returns what else must happen.
    pub fn next(&mut self, input: Input) -> Effect {
        use Input as I;
        use State as S;
        let (next, effect) = match (&*self, input) {
            // A broken connection only waits to be ended.
            (S::Broken(_), _) => return Effect::None,
            (S::Connected | S::Joining { .. }, I::Failed(why)) => (S::Broken(why), Effect::Settle),
            (_, I::Failed(why)) => (S::Broken(why), Effect::None),

            (S::Connected, I::JoinsSent { pending: 0, .. }) => (S::Ready { may_send: true }, Effect::Settle),
            (S::Connected, I::JoinsSent { pending, deadline }) => {
                (S::Joining { pending, deadline, refused: false }, Effect::None)
            }
            (&S::Joining { pending, deadline, refused }, I::JoinAnswered { ok }) => {
                let refused = refused || !ok;
                match pending.saturating_sub(1) {
                    0 => (S::Ready { may_send: !refused }, Effect::Settle),
                    pending => (S::Joining { pending, deadline, refused }, Effect::None),
                }
            }
            (S::Joining { .. }, I::JoinTimeout) => (S::Ready { may_send: false }, Effect::Settle),

            (S::Connected | S::Joining { .. }, I::Phase(Phase::Closing)) => {
                (S::Closing { sent: false }, Effect::Settle)
            }
            (S::Ready { .. } | S::Sending | S::Listening, I::Phase(Phase::Closing)) => {
                (S::Closing { sent: false }, Effect::None)
            }
            (&S::Ready { may_send: true }, I::Phase(Phase::Running)) => (S::Sending, Effect::StartSending),
            (S::Ready { .. } | S::Sending, I::Phase(Phase::Draining))
            | (S::Ready { may_send: false }, I::Phase(Phase::Running)) => (S::Listening, Effect::None),
            (S::Sending, I::NothingToSend) => (S::Listening, Effect::None),
            (S::Closing { sent: false }, I::CloseSent) => (S::Closing { sent: true }, Effect::None),

            // Anything else changes nothing: a late join answer, a phase already followed,
            // a phase while still joining (see the module doc).
            _ => return Effect::None,
        };
        *self = next;
        effect
    }

    /// Whether the connection has counted as set up.
    pub fn settled(&self) -> bool {
        !matches!(self, State::Connected | State::Joining { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut s: State, inputs: impl IntoIterator<Item = Input>) -> (State, Vec<Effect>) {
        let effects = inputs.into_iter().map(|i| s.next(i)).filter(|e| *e != Effect::None).collect();
        (s, effects)
    }

    fn joins(n: usize) -> Input {
        Input::JoinsSent { pending: n, deadline: 7 }
    }

    #[test]
    fn sender_life() {
        use Input::*;
        let (s, e) = run(State::Connected, [joins(2), JoinAnswered { ok: true }]);
        assert_eq!((s.clone(), e), (State::Joining { pending: 1, deadline: 7, refused: false }, vec![]));
        assert!(!s.settled());
        let (s, e) = run(s, [JoinAnswered { ok: true }, Phase(crate::ctx::Phase::Running)]);
        assert_eq!((s.clone(), e), (State::Sending, vec![Effect::Settle, Effect::StartSending]));
        assert!(s.settled());
        let (s, e) = run(s, [NothingToSend, Phase(crate::ctx::Phase::Draining)]);
        assert_eq!((s, e), (State::Listening, vec![]));
    }

    #[test]
    fn setup_ends_once_whatever_happens() {
        use crate::ctx::Phase::*;
        use Input::*;
        // No groups: set up at once.
        assert_eq!(run(State::Connected, [joins(0)]), (State::Ready { may_send: true }, vec![Effect::Settle]));
        // A refused join: set up, but never a sender; late answers change nothing.
        let (s, e) = run(
            State::Connected,
            [joins(2), JoinAnswered { ok: false }, JoinAnswered { ok: true }, JoinAnswered { ok: true }],
        );
        assert_eq!((s.clone(), e), (State::Ready { may_send: false }, vec![Effect::Settle]));
        assert_eq!(run(s, [Phase(Running)]), (State::Listening, vec![]));
        // Unanswered joins time out.
        let (s, e) = run(State::Connected, [joins(3), JoinAnswered { ok: true }, JoinTimeout, JoinTimeout]);
        assert_eq!((s, e), (State::Ready { may_send: false }, vec![Effect::Settle]));
        // Failing before or while joining also counts as set up, once.
        let (s, e) = run(State::Connected, [Failed("x".into()), Failed("y".into()), joins(1)]);
        assert_eq!((s, e), (State::Broken("x".into()), vec![Effect::Settle]));
        let (s, e) = run(State::Connected, [joins(1), Phase(Closing), JoinAnswered { ok: true }]);
        assert_eq!((s, e), (State::Closing { sent: false }, vec![Effect::Settle]));
        // Running while still joining: no sending, even once the joins are in.
        let (s, e) = run(State::Connected, [joins(1), Phase(Running), JoinAnswered { ok: true }, Phase(Draining)]);
        assert_eq!((s, e), (State::Listening, vec![Effect::Settle]));
    }

    #[test]
    fn closing_and_failures() {
        use crate::ctx::Phase::*;
        use Input::*;
        for from in [State::Ready { may_send: true }, State::Sending, State::Listening] {
            let (s, e) = run(from, [Phase(Closing), Phase(Closing), CloseSent, CloseSent, NothingToSend]);
            assert_eq!((s, e), (State::Closing { sent: true }, vec![]));
        }
        let (s, e) = run(State::Sending, [Failed("i/o".into()), Phase(Closing), CloseSent]);
        assert_eq!((s.clone(), e), (State::Broken("i/o".into()), vec![]));
        assert!(s.settled());
        // Draining before the sender ever saw Running: it never sends.
        assert_eq!(run(State::Ready { may_send: true }, [Phase(Draining), Phase(Running)]).0, State::Listening);
        // Phases followed twice change nothing.
        assert_eq!(run(State::Sending, [Phase(Running), Phase(Setup)]), (State::Sending, vec![]));
    }
}
