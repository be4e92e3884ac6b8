//! Mutable resume state (the spec's cached token) and the ONE function that decides how a
//! stream is opened or re-opened.

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};

use super::spec::{Scope, StartPoint, WatchSpec};

/// What the engine knows about its position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeState {
    /// The spec's cached resume token.
    token: Option<RawDocumentBuf>,
    /// Re-open with `startAfter` rather than `resumeAfter`: the stream started with
    /// `startAfter` and no event was returned yet, or the token is an invalidate token the
    /// stream restarts after.
    start_after_pending: bool,
    /// `operationTime` of the first `aggregate` reply, kept only when the user gave no
    /// start option (or a stored time, `restore_time`): without a token, a re-open starts
    /// there instead of "now".
    initial_operation_time: Option<Timestamp>,
}

impl ResumeState {
    /// At start the cached token is the user's `startAfter`/`resumeAfter`, if any.
    pub fn new(spec: &WatchSpec) -> Self {
        let token = spec
            .start
            .token()
            .and_then(|t| RawDocumentBuf::from_document(t).ok());
        ResumeState {
            token,
            start_after_pending: matches!(spec.start, StartPoint::StartAfter(_)),
            ..ResumeState::default()
        }
    }

    /// Continues from a stored position (a token store's record).
    pub fn restore(&mut self, token: RawDocumentBuf, start_after: bool) {
        self.token = Some(token);
        self.start_after_pending = start_after;
    }

    /// Continues from a stored time (a position rewound to a time): without a token, the
    /// stream opens with `startAtOperationTime` there, as after a first reply's time.
    pub fn restore_time(&mut self, time: Timestamp) {
        self.token = None;
        self.start_after_pending = false;
        self.initial_operation_time = Some(time);
    }

    /// After an `invalidate` event: only `startAfter` its token continues the stream.
    pub fn restart_after_invalidate(&mut self) {
        self.start_after_pending = true;
    }

    /// The position is gone (history lost) and the user chose to go on from "now".
    pub fn forget_position(&mut self) {
        *self = ResumeState::default();
    }

    pub fn token(&self) -> Option<&RawDocumentBuf> {
        self.token.as_ref()
    }

    /// Records the reply to the first `aggregate` of this stream.
    pub fn record_open(&mut self, spec: &WatchSpec, operation_time: Option<Timestamp>) {
        if spec.start == StartPoint::Now && self.initial_operation_time.is_none() {
            self.initial_operation_time = operation_time;
        }
    }

    /// Applies one batch that is handed out whole: the cached token becomes the
    /// postBatchResumeToken, or the last event's `_id` when the server sent none.
    /// Returns whether the position moved.
    pub fn record_batch(
        &mut self,
        event_count: usize,
        last_event_id: Option<RawDocumentBuf>,
        post_batch_token: Option<RawDocumentBuf>,
    ) -> bool {
        if event_count > 0 {
            self.start_after_pending = false;
        }
        let next = post_batch_token.or(last_event_id);
        match next {
            Some(token) if self.token.as_ref() != Some(&token) => {
                self.token = Some(token);
                true
            }
            _ => event_count > 0,
        }
    }
}

/// THE choice of start point, for the first open and every re-open (spec "Resume
/// Process"): a cached token → `startAfter` if the user started with `startAfter` and no
/// event has been returned yet (or the token is an invalidate token being restarted
/// after), else `resumeAfter`; no token → `startAtOperationTime`
/// (the user's, else the first reply's `operationTime`); else the original command.
pub fn choose_start(spec: &WatchSpec, state: &ResumeState) -> StartPoint {
    if let Some(token) = state.token.as_ref().and_then(|t| t.to_document().ok()) {
        return if state.start_after_pending {
            StartPoint::StartAfter(token)
        } else {
            StartPoint::ResumeAfter(token)
        };
    }
    match (&spec.start, state.initial_operation_time) {
        (StartPoint::StartAtOperationTime(ts), _) => StartPoint::StartAtOperationTime(*ts),
        (_, Some(ts)) => StartPoint::StartAtOperationTime(ts),
        _ => StartPoint::Now,
    }
}

/// The `aggregate` command for a start point; `split_large_events`: with
/// `$changeStreamSplitLargeEvent` as the last stage (the server requires it last);
/// `partition_stage`: a partitioned member's filter, after the user's stages (it sees the
/// events as the member does).
pub fn aggregate_command(
    spec: &WatchSpec,
    start: &StartPoint,
    split_large_events: bool,
    partition_stage: Option<&Document>,
) -> Document {
    let mut stage = spec.stage_options.clone();
    match start {
        StartPoint::Now => {}
        StartPoint::ResumeAfter(t) => {
            stage.insert("resumeAfter", t.clone());
        }
        StartPoint::StartAfter(t) => {
            stage.insert("startAfter", t.clone());
        }
        StartPoint::StartAtOperationTime(ts) => {
            stage.insert("startAtOperationTime", *ts);
        }
    }
    let target = match &spec.scope {
        Scope::Cluster => {
            stage.insert("allChangesForCluster", true);
            Bson::Int32(1)
        }
        Scope::Database(_) => Bson::Int32(1),
        Scope::Collection { coll, .. } => Bson::String(coll.clone()),
    };
    let mut pipeline: Vec<Bson> = Vec::with_capacity(spec.pipeline.len() + 2);
    pipeline.push(Bson::Document(doc! {"$changeStream": stage}));
    pipeline.extend(spec.pipeline.iter().cloned().map(Bson::Document));
    if let Some(stage) = partition_stage {
        pipeline.push(Bson::Document(stage.clone()));
    }
    if split_large_events {
        pipeline.push(Bson::Document(doc! {"$changeStreamSplitLargeEvent": {}}));
    }
    let mut cursor = Document::new();
    if let Some(n) = spec.batch_size {
        cursor.insert("batchSize", n as i64);
    }
    let mut cmd = doc! {"aggregate": target, "pipeline": pipeline, "cursor": cursor};
    if let Some(c) = &spec.collation {
        cmd.insert("collation", c.clone());
    }
    if let Some(c) = &spec.comment {
        cmd.insert("comment", c.clone());
    }
    cmd.extend(spec.command_options.clone());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::stream::spec::test_spec as spec;

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn fresh_stream_starts_now_then_at_operation_time() {
        let s = spec(doc! {});
        let mut st = ResumeState::new(&s);
        assert_eq!(choose_start(&s, &st), StartPoint::Now);
        let ts = Timestamp {
            time: 10,
            increment: 2,
        };
        st.record_open(&s, Some(ts));
        assert_eq!(choose_start(&s, &st), StartPoint::StartAtOperationTime(ts));
    }

    #[test]
    fn token_wins_over_operation_time() {
        let s = spec(doc! {});
        let mut st = ResumeState::new(&s);
        st.record_open(
            &s,
            Some(Timestamp {
                time: 1,
                increment: 1,
            }),
        );
        assert!(st.record_batch(0, None, Some(raw(doc! {"_data": "01"}))));
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::ResumeAfter(doc! {"_data": "01"})
        );
    }

    #[test]
    fn start_after_is_kept_until_an_event_is_returned() {
        let s = spec(doc! {"startAfter": {"_data": "00"}});
        let mut st = ResumeState::new(&s);
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::StartAfter(doc! {"_data": "00"})
        );
        // An empty batch advances the token but returns no event: still startAfter.
        assert!(st.record_batch(0, None, Some(raw(doc! {"_data": "01"}))));
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::StartAfter(doc! {"_data": "01"})
        );
        assert!(st.record_batch(1, Some(raw(doc! {"_data": "02"})), None));
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::ResumeAfter(doc! {"_data": "02"})
        );
    }

    #[test]
    fn a_restored_time_opens_at_that_time_until_a_token_comes() {
        let s = spec(doc! {});
        let mut st = ResumeState::new(&s);
        let at = Timestamp {
            time: 42,
            increment: 0,
        };
        st.restore_time(at);
        assert_eq!(choose_start(&s, &st), StartPoint::StartAtOperationTime(at));
        // The first reply's operationTime does not replace it.
        st.record_open(
            &s,
            Some(Timestamp {
                time: 99,
                increment: 1,
            }),
        );
        assert_eq!(choose_start(&s, &st), StartPoint::StartAtOperationTime(at));
        st.record_batch(0, None, Some(raw(doc! {"_data": "t"})));
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::ResumeAfter(doc! {"_data": "t"})
        );
    }

    #[test]
    fn restored_and_invalidate_tokens_use_start_after() {
        let s = spec(doc! {});
        let mut st = ResumeState::new(&s);
        st.restore(raw(doc! {"_data": "inv"}), true);
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::StartAfter(doc! {"_data": "inv"})
        );
        st.record_batch(1, Some(raw(doc! {"_data": "x1"})), None);
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::ResumeAfter(doc! {"_data": "x1"})
        );
        st.restart_after_invalidate();
        assert_eq!(
            choose_start(&s, &st),
            StartPoint::StartAfter(doc! {"_data": "x1"})
        );
        st.forget_position();
        assert_eq!(choose_start(&s, &st), StartPoint::Now);
    }

    #[test]
    fn user_resume_after_and_start_time_are_used_first() {
        let s = spec(doc! {"resumeAfter": {"_data": "aa"}});
        assert_eq!(
            choose_start(&s, &ResumeState::new(&s)),
            StartPoint::ResumeAfter(doc! {"_data": "aa"})
        );
        let ts = Timestamp {
            time: 7,
            increment: 0,
        };
        let s = spec(doc! {"startAtOperationTime": ts});
        let mut st = ResumeState::new(&s);
        st.record_open(
            &s,
            Some(Timestamp {
                time: 99,
                increment: 0,
            }),
        );
        assert_eq!(choose_start(&s, &st), StartPoint::StartAtOperationTime(ts));
    }

    #[test]
    fn batch_end_token_prefers_post_batch_token() {
        let s = spec(doc! {});
        let mut st = ResumeState::new(&s);
        st.record_batch(
            2,
            Some(raw(doc! {"_data": "05"})),
            Some(raw(doc! {"_data": "06"})),
        );
        assert_eq!(st.token(), Some(&raw(doc! {"_data": "06"})));
        // An empty batch that does not move the token is not progress.
        assert!(!st.record_batch(0, None, Some(raw(doc! {"_data": "06"}))));
        assert!(!st.record_batch(0, None, None));
    }

    #[test]
    fn aggregate_shapes() {
        let s = spec(
            doc! {"fullDocument": "updateLookup", "batchSize": 5, "pipeline": [{"$match": {"x": 1}}]},
        );
        let cmd = aggregate_command(
            &s,
            &StartPoint::ResumeAfter(doc! {"_data": "01"}),
            false,
            None,
        );
        assert_eq!(
            cmd,
            doc! {
                "aggregate": "c",
                "pipeline": [
                    {"$changeStream": {"fullDocument": "updateLookup", "resumeAfter": {"_data": "01"}}},
                    {"$match": {"x": 1}},
                ],
                "cursor": {"batchSize": 5i64},
            }
        );
        let cluster = WatchSpec::from_document(&doc! {"uri": "mongodb://h"}).unwrap();
        let cmd = aggregate_command(&cluster, &StartPoint::Now, false, None);
        assert_eq!(
            cmd,
            doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"allChangesForCluster": true}}], "cursor": {}}
        );
        assert_eq!(cluster.command_db(), "admin");
        // The split stage goes last, after the user's stages (the server requires it).
        let cmd = aggregate_command(&s, &StartPoint::Now, true, None);
        let stages = cmd.get_array("pipeline").unwrap();
        assert_eq!(stages.len(), 3);
        assert_eq!(
            stages[2],
            Bson::Document(doc! {"$changeStreamSplitLargeEvent": {}})
        );
        // A partitioned member's filter: after the user's stages (it sees what the member
        // sees), before the split stage.
        let filter = doc! {"$match": {"p": 1}};
        let cmd = aggregate_command(&s, &StartPoint::Now, true, Some(&filter));
        let stages = cmd.get_array("pipeline").unwrap();
        assert_eq!(stages.len(), 4);
        assert_eq!(stages[1], Bson::Document(s.pipeline[0].clone()));
        assert_eq!(stages[2], Bson::Document(filter));
        assert_eq!(
            stages[3],
            Bson::Document(doc! {"$changeStreamSplitLargeEvent": {}})
        );
    }
}
