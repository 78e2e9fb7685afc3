//! A reply's markdown on the page, block by block: a finished block is parsed and drawn
//! once, only the open block is drawn again with each piece; finished blocks sit in groups
//! laid out only on screen, and in a long reply the groups far off screen are unloaded to
//! their words ([`BlockGroup`]).

use std::rc::Rc;

use relay_protocol::Message;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{Element, IntersectionObserver, IntersectionObserverEntry, IntersectionObserverInit};
use yew::prelude::*;

use crate::markdown::{self, blocks::Blocks};

/// Props of [`ReplyBody`].
#[derive(Properties, PartialEq)]
pub struct BodyProps {
    /// The message whose text it shows.
    pub text: Rc<Message>,
    /// Whether the text is still growing.
    pub streaming: bool,
}

/// A reply's markdown, block by block: the finished blocks are components whose text does
/// not change, so they are neither parsed nor put on the page again; only the open block
/// (the last) is, and it is highlighted once the reply is complete.
#[function_component(ReplyBody)]
pub fn reply_body(props: &BodyProps) -> Html {
    let shared = use_mut_ref(Blocks::default);
    let text = &props.text.content;
    let mut blocks = shared.borrow_mut();
    blocks.update(text);
    let (finished, generation) = (blocks.finished().len(), blocks.generation());
    let open = Rc::<str>::from(blocks.open(text));
    drop(blocks);
    let unload_far = finished >= UNLOAD_FROM_BLOCKS;
    // A long reply shown whole at once (a stored one, a tab joining late, a text cut
    // afresh) draws only its last groups at first: the list opens at its end, and the
    // groups that come within two screens of the view are drawn as soon as the page is
    // laid out. Decided at each cut's first render: a reply streaming in has no finished
    // block then.
    let first_render = use_mut_ref(|| None::<(u64, usize)>);
    let unloaded_before = match *first_render.borrow() {
        Some((cut, before)) if cut == generation => before,
        _ => {
            if unload_far {
                finished.saturating_sub(2 * BLOCKS_PER_GROUP)
            } else {
                0
            }
        }
    };
    *first_render.borrow_mut() = Some((generation, unloaded_before));
    // Finished blocks go in groups, so the page's layout deals with a few dozen boxes, not
    // thousands, and a group off screen is skipped whole; groups go in batches, so a piece
    // of a long reply costs this render a few batches, not every group. Every child keyed,
    // always: a list that is keyed only at times is rebuilt whole by Yew each time it
    // changes kind. Another cut of the text is drawn afresh.
    let items = (0..finished)
        .step_by(BLOCKS_PER_BATCH)
        .enumerate()
        .map(|(i, start)| {
            let run = Run { blocks: shared.clone(), generation, start, end: finished.min(start + BLOCKS_PER_BATCH) };
            html! { <GroupBatch key={format!("{generation}.{i}")} {run} {unload_far} {unloaded_before} /> }
        })
        .chain(std::iter::once(html! {
            <MarkdownBlock key="open" source={open} highlight={!props.streaming} />
        }));
    html! {
        <div class="content markdown">{ for items }</div>
    }
}

/// How many finished blocks of a reply make a group.
const BLOCKS_PER_GROUP: usize = 32;

/// How many finished blocks of a reply make a batch of groups.
const BLOCKS_PER_BATCH: usize = 32 * BLOCKS_PER_GROUP;

/// From how many finished blocks a reply unloads its groups far off screen (about 50 KB of
/// markdown): a shorter reply's page is small enough to keep whole.
const UNLOAD_FROM_BLOCKS: usize = 8 * BLOCKS_PER_GROUP;

/// How far beyond the visible part of the list a group stays drawn: two screens above and
/// below, so scrolling finds it drawn already.
const DRAWN_MARGIN: &str = "200% 0px";

/// A range of a reply's finished blocks, read from the blocks they share with the reply.
/// Equal runs show the same text: a finished block never changes within a generation.
#[derive(Clone)]
struct Run {
    blocks: Rc<std::cell::RefCell<Blocks>>,
    generation: u64,
    start: usize,
    end: usize,
}

impl PartialEq for Run {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.blocks, &other.blocks)
            && (self.generation, self.start, self.end) == (other.generation, other.start, other.end)
    }
}

/// Props of [`GroupBatch`] and [`BlockGroup`].
#[derive(Properties, PartialEq)]
struct RunProps {
    run: Run,
    /// Whether a full group far off screen gives up its drawn blocks (see [`BlockGroup`]).
    unload_far: bool,
    /// Full groups that start before this block start unloaded.
    unloaded_before: usize,
}

/// Groups of finished blocks, side by side in the reply (no element of its own).
#[function_component(GroupBatch)]
fn group_batch(props: &RunProps) -> Html {
    let RunProps { run, unload_far, unloaded_before } = props;
    let groups = (run.start..run.end).step_by(BLOCKS_PER_GROUP).enumerate().map(|(i, start)| {
        let group = Run { start, end: run.end.min(start + BLOCKS_PER_GROUP), ..run.clone() };
        html! { <BlockGroup key={i} run={group} unload_far={*unload_far} unloaded_before={*unloaded_before} /> }
    });
    html! { <>{ for groups }</> }
}

/// Whether a group's blocks are drawn.
#[derive(Clone, Copy, PartialEq)]
enum Drawn {
    Yes,
    /// Its words only, at its height when it was last drawn (none if it never was).
    No(Option<f64>),
}

/// What a group's watcher saw.
enum Distance {
    /// Within [`DRAWN_MARGIN`] of the visible part of the list.
    Near,
    /// Beyond it, at this height.
    Far(f64),
}

impl Reducible for Drawn {
    type Action = Distance;

    /// Only a change between drawn and not drawn is a new state (the group is drawn again
    /// only then).
    fn reduce(self: Rc<Self>, seen: Distance) -> Rc<Self> {
        match (*self, seen) {
            (Drawn::No(_), Distance::Near) => Rc::new(Drawn::Yes),
            (Drawn::Yes, Distance::Far(height)) => Rc::new(Drawn::No((height > 0.0).then_some(height))),
            _ => self,
        }
    }
}

/// Finished blocks of a reply; a block is drawn once (the group's last may gain blocks).
///
/// In a long reply, a full group more than two screens from the visible part of the list
/// is unloaded: it keeps the height it was last laid out at and its words, as one text
/// without markup, and is drawn again as it comes back within two screens, or before the
/// page is printed. A 1 MB reply drawn whole leaves about 53,000 elements and 80 MiB in the
/// browser's heap, and reopening its chat blocked the page for half a second; unloaded,
/// about 600 elements and 17 MiB, and no long task (BENCHMARKS.md). The words stay so that
/// find-in-page finds them (and scrolls there, which draws the group again). What an
/// unloaded group loses until it is drawn: its links and copy buttons in the tab order,
/// its headings for a screen reader's navigation. Each `data-blocks` says how many blocks a
/// group holds, drawn or not.
#[function_component(BlockGroup)]
fn block_group(props: &RunProps) -> Html {
    let element = use_node_ref();
    let full = props.run.end - props.run.start == BLOCKS_PER_GROUP;
    let watched = props.unload_far && full;
    let drawn =
        use_reducer(|| if watched && props.run.start < props.unloaded_before { Drawn::No(None) } else { Drawn::Yes });
    {
        let (element, drawn) = (element.clone(), drawn.dispatcher());
        use_effect_with(watched, move |&watched| {
            let watching = watched.then(|| DistanceWatch::start(&element, drawn)).flatten();
            move || drop(watching)
        });
    }
    let blocks = props.run.blocks.borrow();
    // A run is read in the render that made it, so it is within the blocks; a panic would
    // end the app, so a stale one shows nothing instead.
    let shown = blocks.finished().get(props.run.start..props.run.end).unwrap_or_default();
    if let Drawn::No(height) = *drawn {
        let words: Vec<String> = shown.iter().map(|block| markdown::plain_text(block, usize::MAX).0).collect();
        let style = height.map(|h| format!("height:{h}px"));
        return html! {
            <div class="md-group unloaded" ref={element} {style} data-blocks={shown.len().to_string()}>{ words.join(" ") }</div>
        };
    }
    let items = shown.iter().enumerate().map(|(i, block)| {
        html! { <MarkdownBlock key={i} source={block.clone()} highlight=true /> }
    });
    html! { <div class="md-group" ref={element} data-blocks={shown.len().to_string()}>{ for items }</div> }
}

/// Watches how far a group is from the visible part of its list (see [`Distance`]) until
/// dropped; before the page is printed, the group is drawn (a printed reply is whole).
struct DistanceWatch {
    observer: IntersectionObserver,
    _on_change: Closure<dyn Fn(js_sys::Array)>,
    on_print: Closure<dyn Fn()>,
}

impl DistanceWatch {
    /// None when the group is not on the page or the browser cannot watch.
    fn start(element: &NodeRef, drawn: UseReducerDispatcher<Drawn>) -> Option<Self> {
        let group = element.cast::<Element>()?;
        let list = group.closest("#messages").ok().flatten();
        let on_print = {
            let drawn = drawn.clone();
            // Drawn in a microtask, which runs before the browser lays the page out to print.
            Closure::<dyn Fn()>::new(move || drawn.dispatch(Distance::Near))
        };
        let on_change = Closure::<dyn Fn(js_sys::Array)>::new(move |entries: js_sys::Array| {
            // The last entry is the group's latest state.
            if let Some(entry) = entries.iter().last() {
                let entry = entry.unchecked_into::<IntersectionObserverEntry>();
                // The entry's rectangle is the group's as last laid out: no layout is forced.
                let seen = if entry.is_intersecting() {
                    Distance::Near
                } else {
                    Distance::Far(entry.bounding_client_rect().height())
                };
                drawn.dispatch(seen);
            }
        });
        let options = IntersectionObserverInit::new();
        options.set_root(list.as_ref());
        options.set_root_margin(DRAWN_MARGIN);
        let observer = IntersectionObserver::new_with_options(on_change.as_ref().unchecked_ref(), &options).ok()?;
        observer.observe(&group);
        if let Some(window) = web_sys::window() {
            let _ = window.add_event_listener_with_callback("beforeprint", on_print.as_ref().unchecked_ref());
        }
        Some(DistanceWatch { observer, _on_change: on_change, on_print })
    }
}

impl Drop for DistanceWatch {
    fn drop(&mut self) {
        self.observer.disconnect();
        if let Some(window) = web_sys::window() {
            let _ = window.remove_event_listener_with_callback("beforeprint", self.on_print.as_ref().unchecked_ref());
        }
    }
}

/// Props of [`MarkdownBlock`].
#[derive(Properties, PartialEq)]
struct BlockProps {
    source: Rc<str>,
    highlight: bool,
}

/// One block of markdown, rendered when its text changes.
#[function_component(MarkdownBlock)]
fn markdown_block(props: &BlockProps) -> Html {
    if props.source.is_empty() {
        return html! {};
    }
    let html = markdown::render(&props.source, props.highlight);
    html! { <div class="md-block">{ Html::from_html_unchecked(html.into()) }</div> }
}
