//! "Load more" at the edge of a list: a button (for the keyboard and for browsers that
//! cannot tell) that also presses itself when it comes into view (IntersectionObserver),
//! so scrolling to the edge loads the next page without a scroll handler.

use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{IntersectionObserver, IntersectionObserverEntry};
use yew::prelude::*;

/// Props of [`LoadMore`].
#[derive(Properties, PartialEq)]
pub struct LoadMoreProps {
    /// The element's id.
    pub id: AttrValue,
    /// What the button says.
    pub label: AttrValue,
    /// Loads the next page. Coming into view calls it once per mount (give the component a
    /// `key` that changes with each page loaded, so it asks again only after the last page
    /// came in); a click calls it every time.
    pub on_load: Callback<()>,
}

/// The button, watched while it is on the page.
#[function_component(LoadMore)]
pub fn load_more(props: &LoadMoreProps) -> Html {
    let button = use_node_ref();
    let asked = use_mut_ref(|| false);
    let load = {
        let (asked, on_load) = (asked.clone(), props.on_load.clone());
        Callback::from(move |()| {
            if !std::mem::replace(&mut *asked.borrow_mut(), true) {
                on_load.emit(());
            }
        })
    };
    {
        let (button, load) = (button.clone(), load.clone());
        use_effect_with((), move |_| {
            let on_seen = Closure::<dyn Fn(js_sys::Array)>::new(move |entries: js_sys::Array| {
                let seen = entries.iter().any(|e| e.unchecked_into::<IntersectionObserverEntry>().is_intersecting());
                if seen {
                    load.emit(());
                }
            });
            let observer = IntersectionObserver::new(on_seen.as_ref().unchecked_ref()).ok();
            if let (Some(observer), Some(element)) = (&observer, button.cast::<web_sys::Element>()) {
                observer.observe(&element);
            }
            move || {
                if let Some(observer) = observer {
                    observer.disconnect();
                }
                drop(on_seen);
            }
        });
    }
    let onclick = {
        let on_load = props.on_load.clone();
        Callback::from(move |_| on_load.emit(()))
    };
    html! {
        <button id={props.id.clone()} class="link load-more" type="button" ref={button} {onclick}>
            { &props.label }
        </button>
    }
}
