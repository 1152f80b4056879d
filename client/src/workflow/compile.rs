//! Compiles a workflow document into a [`Plan`]: every task gets its id and message now, the
//! ones that wait for a result are parked, and each node's result is routed by [`Links`]
//! (a chain's member to the next member's first tasks, a group's members to a join when
//! something waits for the group). A group followed by anything becomes a chord, as in Celery.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::doc::{Kind, Node, Options, Signature};
use super::plan::{Input, JoinSlot, Links, Parked, Plan, PlannedJoin, PlannedTask, TaskLeaf, Tree};
use crate::args::ArgsError;
use crate::broker::Broker;
use crate::client::{
    CallOptions, ClientError, MAX_ARGS_BYTES, Resolved, build, encode_args, resolve, valid_task_id,
};
use crate::message::{LimitOverrides, now_ms};
use crate::producer::ComponentCache;

/// Most tasks one workflow may hold (callbacks and chunk tasks count; chunk items do not).
pub const MAX_WORKFLOW_TASKS: usize = 100_000;
/// Least time a workflow's tree is kept: a week, or the longest result expiry in it.
const TREE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Checks `node` against the registry and compiles it; `id` is the workflow's id (a UUID if
/// `None`).
pub(crate) async fn plan<B: Broker>(
    broker: &B,
    components: &ComponentCache,
    node: &Node,
    id: Option<String>,
) -> Result<Plan, ClientError> {
    let mut addresses = Vec::new();
    node.addresses(&mut addresses);
    addresses.sort_unstable();
    addresses.dedup();
    let mut resolved = HashMap::new();
    for address in addresses {
        resolved.insert(
            address.to_string(),
            resolve(broker, components, address).await?,
        );
    }
    compile(node, id, &resolved, now_ms())
}

/// The pure part of [`plan`], over already resolved addresses.
pub(crate) fn compile(
    node: &Node,
    id: Option<String>,
    resolved: &HashMap<String, Resolved>,
    now: u64,
) -> Result<Plan, ClientError> {
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if !valid_task_id(&id) {
        return Err(ClientError::InvalidOption(format!(
            "workflow id `{id}`: use 1 to 128 printable characters without spaces"
        )));
    }
    let mut compiler = Compiler {
        resolved,
        now,
        tasks: Vec::new(),
        joins: Vec::new(),
        ids: HashSet::from([id.clone()]),
        ttl_ms: TREE_TTL_MS,
        within: Vec::new(),
        depth: 0,
    };
    let (_, tree) = compiler.node(node, &Options::default(), false, Links::default(), "")?;
    Ok(Plan {
        id,
        tree,
        tasks: compiler.tasks,
        joins: compiler.joins,
        ttl_ms: compiler.ttl_ms,
    })
}

struct Compiler<'a> {
    resolved: &'a HashMap<String, Resolved>,
    now: u64,
    tasks: Vec<PlannedTask>,
    joins: Vec<PlannedJoin>,
    ids: HashSet<String>,
    ttl_ms: u64,
    /// The joins of the groups being compiled, outermost first.
    within: Vec<String>,
    /// How deeply nested the node being compiled is.
    depth: usize,
}

/// Deepest nesting of nodes accepted (trees deeper than this would not round-trip as JSON).
const MAX_DEPTH: usize = 32;

/// A task's arguments: one call's, or a batch's argument lists (the first being item
/// `first` of the node's items).
enum Args<'a> {
    Call(&'a Signature),
    Batch { lists: Vec<Value>, first: usize },
}

fn at(path: &str, error: ClientError) -> ClientError {
    match error {
        ClientError::Workflow { .. } => error,
        error => ClientError::Workflow {
            at: if path.is_empty() {
                "the top".to_string()
            } else {
                path.to_string()
            },
            source: Box::new(error),
        },
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::InvalidOption(message)
}

impl Compiler<'_> {
    /// Compiles `node` (its task options under `outer`), routing its result to `sink`.
    /// `parked`: its first tasks wait for an input. Returns those first tasks' ids (what
    /// starts the node) and its tree.
    fn node(
        &mut self,
        node: &Node,
        outer: &Options,
        parked: bool,
        sink: Links,
        path: &str,
    ) -> Result<(Vec<String>, Tree), ClientError> {
        if self.depth >= MAX_DEPTH {
            return Err(at(
                path,
                invalid(format!(
                    "the workflow is nested more than {MAX_DEPTH} levels deep"
                )),
            ));
        }
        self.depth += 1;
        let compiled = self.node_inner(node, outer, parked, sink, path);
        self.depth -= 1;
        compiled
    }

    fn node_inner(
        &mut self,
        node: &Node,
        outer: &Options,
        parked: bool,
        mut sink: Links,
        path: &str,
    ) -> Result<(Vec<String>, Tree), ClientError> {
        let options = node.options.under(outer);
        let mut link = Vec::new();
        for (i, callback) in node.options.link.iter().enumerate() {
            let (entries, tree) = self.node(
                callback,
                &options,
                true,
                Links::default(),
                &format!("{path}.link[{i}]"),
            )?;
            sink.next.extend(entries);
            link.push(tree);
        }
        let mut link_error = Vec::new();
        for (i, errback) in node.options.link_error.iter().enumerate() {
            let (entries, tree) = self.node(
                errback,
                &options,
                true,
                Links::default(),
                &format!("{path}.link_error[{i}]"),
            )?;
            sink.errback.extend(entries);
            link_error.push(tree);
        }
        let (entries, tree) = match &node.kind {
            Kind::Task(signature) => {
                let id = self
                    .task(
                        &signature.task,
                        Args::Call(signature),
                        &options,
                        parked,
                        sink,
                    )
                    .map_err(|error| at(path, error))?;
                let tree = Tree::Task(TaskLeaf {
                    id: id.clone(),
                    task: signature.task.clone(),
                    batch: false,
                    link,
                    link_error,
                });
                return Ok((vec![id], tree));
            }
            Kind::Chain(nodes) => self.chain(nodes, &options, parked, sink, path)?,
            Kind::Group(nodes) => {
                let (entries, trees) =
                    self.group(nodes, &options, parked, sink, &format!("{path}.group"))?;
                (entries, Tree::Group(trees))
            }
            Kind::Chord { header, body } => {
                if header.is_empty() {
                    return Err(at(
                        path,
                        invalid("a chord needs at least one header task".into()),
                    ));
                }
                let (body_entries, body) =
                    self.node(body, &options, true, sink, &format!("{path}.chord.body"))?;
                let to_body = Links {
                    next: body_entries,
                    ..Links::default()
                };
                let (entries, header) = self.group(
                    header,
                    &options,
                    parked,
                    to_body,
                    &format!("{path}.chord.header"),
                )?;
                (
                    entries,
                    Tree::Chord {
                        header,
                        body: Box::new(body),
                    },
                )
            }
            Kind::Chunks { task, items, n } => self
                .chunks(task, items, *n, &options, parked, sink, path)
                .map_err(|error| at(path, error))?,
            Kind::Map { task, items } | Kind::Starmap { task, items } => {
                let lists = match &node.kind {
                    Kind::Map { .. } => items
                        .iter()
                        .map(|item| Value::Array(vec![item.clone()]))
                        .collect(),
                    _ => items.clone(),
                };
                let id = self
                    .task(
                        task,
                        Args::Batch { lists, first: 0 },
                        &options,
                        parked,
                        sink,
                    )
                    .map_err(|error| at(path, error))?;
                let tree = Tree::Task(TaskLeaf {
                    id: id.clone(),
                    task: task.clone(),
                    batch: true,
                    link,
                    link_error,
                });
                return Ok((vec![id], tree));
            }
        };
        let tree = if link.is_empty() && link_error.is_empty() {
            tree
        } else {
            Tree::Linked {
                node: Box::new(tree),
                link,
                link_error,
            }
        };
        Ok((entries, tree))
    }

    /// Members compiled last to first, each routed to the next one's first tasks.
    fn chain(
        &mut self,
        nodes: &[Node],
        options: &Options,
        parked: bool,
        sink: Links,
        path: &str,
    ) -> Result<(Vec<String>, Tree), ClientError> {
        if nodes.is_empty() {
            return Err(at(
                path,
                invalid("a chain needs at least one member".into()),
            ));
        }
        let mut sink = sink;
        let mut entries = Vec::new();
        let mut trees = Vec::with_capacity(nodes.len());
        for (i, member) in nodes.iter().enumerate().rev() {
            let waits = i > 0 || parked;
            let (first, tree) =
                self.node(member, options, waits, sink, &format!("{path}.chain[{i}]"))?;
            sink = Links {
                next: first.clone(),
                ..Links::default()
            };
            entries = first;
            trees.push(tree);
        }
        trees.reverse();
        Ok((entries, Tree::Chain(trees)))
    }

    /// A group: its members deliver to a join when something waits for the group's result.
    /// (A failed compile is dropped whole, so `within` need not be restored on an error.)
    fn group(
        &mut self,
        nodes: &[Node],
        options: &Options,
        parked: bool,
        sink: Links,
        path: &str,
    ) -> Result<(Vec<String>, Vec<Tree>), ClientError> {
        if nodes.is_empty() {
            return Err(at(
                path,
                invalid("a group needs at least one member".into()),
            ));
        }
        let join = (!sink.is_empty()).then(|| self.join(nodes.len(), options, false, sink));
        self.within.extend(join.clone());
        let mut entries = Vec::new();
        let mut trees = Vec::with_capacity(nodes.len());
        for (index, member) in nodes.iter().enumerate() {
            let to_join = Links {
                join: join.as_ref().map(|join| JoinSlot {
                    join: join.clone(),
                    index,
                }),
                ..Links::default()
            };
            let (first, tree) = self.node(
                member,
                options,
                parked,
                to_join,
                &format!("{path}[{index}]"),
            )?;
            entries.extend(first);
            trees.push(tree);
        }
        if join.is_some() {
            self.within.pop();
        }
        Ok((entries, trees))
    }

    fn join(&mut self, size: usize, options: &Options, flatten: bool, links: Links) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.joins.push(PlannedJoin {
            id: id.clone(),
            size,
            collect: options.allow_failures,
            flatten,
            links,
        });
        id
    }

    /// `n` batch tasks over consecutive slices of `items`, gathered flattened.
    #[allow(clippy::too_many_arguments)]
    fn chunks(
        &mut self,
        task: &str,
        items: &[Value],
        n: usize,
        options: &Options,
        parked: bool,
        sink: Links,
        path: &str,
    ) -> Result<(Vec<String>, Tree), ClientError> {
        if n == 0 || items.is_empty() {
            return Err(invalid(format!(
                "chunks of `{task}` need at least one item and n ≥ 1 (got {} items, n = {n})",
                items.len()
            )));
        }
        let size = items.len().div_ceil(n);
        let slices: Vec<&[Value]> = items.chunks(size).collect();
        let join = (!sink.is_empty()).then(|| self.join(slices.len(), options, true, sink));
        self.within.extend(join.clone());
        let mut entries = Vec::new();
        let mut leaves = Vec::new();
        for (index, slice) in slices.into_iter().enumerate() {
            let links = Links {
                join: join.as_ref().map(|join| JoinSlot {
                    join: join.clone(),
                    index,
                }),
                ..Links::default()
            };
            let batch = Args::Batch {
                lists: slice.to_vec(),
                first: index * size,
            };
            let id = self
                .task(task, batch, options, parked, links)
                .map_err(|error| at(&format!("{path}.chunks[{index}]"), error))?;
            entries.push(id.clone());
            leaves.push(Tree::Task(TaskLeaf {
                id,
                task: task.to_string(),
                batch: true,
                link: Vec::new(),
                link_error: Vec::new(),
            }));
        }
        if join.is_some() {
            self.within.pop();
        }
        Ok((entries, Tree::Chunks(leaves)))
    }

    /// One task: its arguments encoded (around the input it waits for, if parked), its
    /// message built and checked.
    fn task(
        &mut self,
        address: &str,
        args: Args<'_>,
        options: &Options,
        parked: bool,
        links: Links,
    ) -> Result<String, ClientError> {
        if self.tasks.len() >= MAX_WORKFLOW_TASKS {
            return Err(invalid(format!(
                "the workflow has more than {MAX_WORKFLOW_TASKS} tasks; split it"
            )));
        }
        let resolved = self
            .resolved
            .get(address)
            .ok_or_else(|| invalid(format!("task `{address}` was not resolved")))?;
        let (text, input, batch, task_id) = match args {
            Args::Call(signature) => {
                let (text, input) = if parked && !signature.immutable {
                    encode_around_input(resolved, signature)?
                } else {
                    let text = encode_args(
                        &resolved.task,
                        signature.args.clone(),
                        signature.kwargs.clone(),
                    )?;
                    (text, Input::Ignore)
                };
                (text, input, false, signature.task_id.clone())
            }
            Args::Batch { lists, first } => {
                let mut parts = Vec::with_capacity(lists.len());
                for (i, list) in (first..).zip(lists) {
                    if !matches!(list, Value::Array(_) | Value::Object(_)) {
                        return Err(ClientError::Args(ArgsError::new(format!(
                            "item {i} for `{address}` must be an argument list (a JSON array or object), got {list}"
                        ))));
                    }
                    let encoded = encode_args(&resolved.task, Some(list), None).map_err(
                        |error| match error {
                            ClientError::Args(error) => ClientError::Args(
                                error.around(&format!("item {i} for `{address}`: "), ""),
                            ),
                            other => other,
                        },
                    )?;
                    parts.push(encoded);
                }
                let text = format!("[{}]", parts.join(","));
                if text.len() > MAX_ARGS_BYTES {
                    return Err(ClientError::TooLarge {
                        size: text.len(),
                        limit: MAX_ARGS_BYTES,
                    });
                }
                (text, Input::Ignore, true, None)
            }
        };
        let millis = |ms: Option<u64>| ms.map(Duration::from_millis);
        let call = CallOptions {
            queue: options.queue.clone(),
            priority: options.priority,
            countdown: if parked {
                None
            } else {
                millis(options.countdown_ms)
            },
            expires: millis(options.expires_ms),
            max_retries: options.max_retries,
            retry_backoff: options.retry_backoff,
            limits: LimitOverrides {
                time_ms: options.time_limit_ms,
                fuel: options.fuel,
                memory: options.memory,
            },
            task_id,
            max_deliveries: options.max_deliveries,
            result_expires: millis(options.result_expires_ms),
            ..CallOptions::default()
        };
        let mut message = build(resolved, text, call, self.now)?;
        message.batch = batch;
        if !self.ids.insert(message.id.clone()) {
            return Err(invalid(format!(
                "task id `{}` is used twice in the workflow",
                message.id
            )));
        }
        self.ttl_ms = self.ttl_ms.max(message.result_expires_ms);
        let id = message.id.clone();
        self.tasks.push(PlannedTask {
            message,
            parked: parked.then_some(Parked {
                input,
                delay_ms: options.countdown_ms,
            }),
            links,
            address: address.to_string(),
            within: self.within.clone(),
        });
        Ok(id)
    }
}

/// A parked call's own arguments, encoded as if its input were the first positional one,
/// then with the input taken out again: where it goes is the [`Input`].
fn encode_around_input(
    resolved: &Resolved,
    signature: &Signature,
) -> Result<(String, Input), ClientError> {
    let (positional, keywords) = match (&signature.args, &signature.kwargs) {
        (Some(object @ Value::Object(_)), None) => (None, Some(object.clone())),
        (args, kwargs) => (args.clone(), kwargs.clone()),
    };
    let mut values = match positional {
        None => Vec::new(),
        Some(Value::Array(values)) => values,
        Some(other) => {
            return Err(invalid(format!(
                "arguments to `{}` must be a JSON array of positional values, got {other}",
                signature.task
            )));
        }
    };
    values.insert(0, Value::Null);
    let task = &resolved.task;
    let text = encode_args(task, Some(Value::Array(values)), keywords).map_err(|error| match error {
        ClientError::Args(error) => ClientError::Args(error.around(
            "",
            " (it receives the previous result as its first argument; add \"immutable\": true to ignore it)",
        )),
        other => other,
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(mut values)) => {
            values.remove(0);
            Ok((Value::Array(values).to_string(), Input::Prepend))
        }
        Ok(Value::Object(mut map)) => {
            let first = task.params.first().cloned().unwrap_or_default();
            map.remove(&first);
            Ok((Value::Object(map).to_string(), Input::Keyword(first)))
        }
        _ => Err(invalid(format!(
            "arguments to `{}` did not encode",
            signature.task
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Address, TaskInfo};
    use crate::workflow::{chain, chord, group, task};
    use serde_json::json;

    fn registry() -> HashMap<String, Resolved> {
        [
            ("math.add", &["x", "y"][..]),
            ("math.xsum", &["numbers"][..]),
        ]
        .into_iter()
        .map(|(address, params)| {
            let parsed = Address::parse(address).unwrap();
            let resolved = Resolved {
                task: TaskInfo {
                    name: parsed.task.clone(),
                    doc: String::new(),
                    params: params.iter().map(|p| p.to_string()).collect(),
                },
                address: parsed,
                pinned: None,
            };
            (address.to_string(), resolved)
        })
        .collect()
    }

    fn compiled(node: Node) -> Plan {
        compile(&node, Some("wf".into()), &registry(), 1_000).expect("compiles")
    }

    fn planned<'a>(plan: &'a Plan, id: &str) -> &'a PlannedTask {
        plan.tasks
            .iter()
            .find(|task| task.message.id == id)
            .unwrap()
    }

    #[test]
    fn a_chain_parks_each_step_behind_the_previous_one() {
        let plan = compiled(chain([
            task("math.add").args(json!([4, 9])).task_id("a"),
            task("math.add").args(json!([8])).task_id("b"),
            task("math.add").kwargs(json!({"y": 1})).task_id("c"),
            task("math.add")
                .args(json!([1, 1]))
                .immutable()
                .task_id("d"),
        ]));
        let a = planned(&plan, "a");
        assert_eq!(
            (a.parked.as_ref(), a.links.next.as_slice()),
            (None, &["b".to_string()][..])
        );
        let b = planned(&plan, "b");
        assert_eq!(b.message.args, "[8]");
        assert_eq!(b.parked.as_ref().unwrap().input, Input::Prepend);
        let c = planned(&plan, "c");
        assert_eq!(c.message.args, r#"{"y":1}"#);
        assert_eq!(c.parked.as_ref().unwrap().input, Input::Keyword("x".into()));
        let d = planned(&plan, "d");
        assert_eq!(
            (d.message.args.as_str(), &d.parked.as_ref().unwrap().input),
            ("[1,1]", &Input::Ignore)
        );
        assert!(d.links.is_empty());
    }

    #[test]
    fn a_group_followed_by_a_task_becomes_a_chord() {
        let plan = compiled(chain([
            group((0..3).map(|i| task("math.add").args(json!([i, i])))),
            task("math.xsum").task_id("sum").into(),
        ]));
        assert_eq!(plan.joins.len(), 1);
        let join = &plan.joins[0];
        assert_eq!(
            (join.size, join.links.next.as_slice()),
            (3, &["sum".to_string()][..])
        );
        let slots: Vec<usize> = plan
            .tasks
            .iter()
            .filter_map(|task| task.links.join.as_ref().map(|slot| slot.index))
            .collect();
        assert_eq!(slots, [0, 1, 2]);
        let same = compiled(chord(
            (0..3).map(|i| task("math.add").args(json!([i, i]))),
            task("math.xsum").task_id("sum"),
        ));
        assert_eq!(same.joins[0].links, join.links);
    }

    #[test]
    fn chunks_split_items_into_n_batch_tasks() {
        let items: Vec<Value> = (0..10).map(|i| json!([i, i])).collect();
        let plan = compiled(task("math.add").chunks(items, 3));
        let sizes: Vec<usize> = plan
            .tasks
            .iter()
            .map(|task| {
                serde_json::from_str::<Vec<Value>>(&task.message.args)
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert!(plan.tasks.iter().all(|task| task.message.batch));
        assert!(matches!(plan.tree, Tree::Chunks(ref leaves) if leaves.len() == 3));
    }

    #[test]
    fn mistakes_name_the_node() {
        let refused = |node: Node, fragment: &str| {
            let error = compile(&node, None, &registry(), 0)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(fragment), "`{error}` lacks `{fragment}`");
        };
        refused(
            chain([
                task("math.add").args(json!([1, 2])),
                task("math.add").args(json!([1, 2])),
            ]),
            ".chain[1]: task `add` takes 2 arguments but 3 were given (it receives the previous result",
        );
        refused(
            group(Vec::<Node>::new()),
            "a group needs at least one member",
        );
        refused(
            group([task("math.add").task_id("x"), task("math.add").task_id("x")]),
            "task id `x` is used twice",
        );
        refused(
            task("math.add").chunks(vec![json!(5)], 1),
            "must be an argument list",
        );
    }
}
