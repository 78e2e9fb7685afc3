//! Toasts: errors and notices at the bottom of the screen, each dismissed after a while or
//! by hand, with a Retry button where retrying makes sense.

use yew::prelude::*;

use super::icons::{self, Icon};
use crate::ctx::Ctx;
use crate::state::{Action, Toast};

/// How long a toast stays, in milliseconds.
const SHOWN_MS: u32 = 8000;

/// Props of [`Toasts`].
#[derive(Properties, PartialEq)]
pub struct ToastsProps {
    /// The toasts on screen, oldest first.
    pub toasts: Vec<Toast>,
}

/// The toasts on screen.
#[function_component(Toasts)]
pub fn toasts(props: &ToastsProps) -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let newest = props.toasts.last().map(|t| t.id);
    {
        let ctx = ctx.clone();
        use_effect_with(newest, move |newest| {
            let timer = newest
                .map(|id| gloo_timers::callback::Timeout::new(SHOWN_MS, move || ctx.dispatch(Action::Dismiss(id))));
            move || {
                if let Some(timer) = timer {
                    timer.forget();
                }
            }
        });
    }
    html! {
        <div class="toasts" id="toasts" role="status" aria-live="polite">
            { for props.toasts.iter().map(|toast| {
                let id = toast.id;
                let dismiss = { let ctx = ctx.clone(); Callback::from(move |_| ctx.dispatch(Action::Dismiss(id))) };
                let retry = toast.retry.clone().map(|retry| {
                    let ctx = ctx.clone();
                    Callback::from(move |_| {
                        ctx.retry(retry.clone());
                        ctx.dispatch(Action::Dismiss(id));
                    })
                });
                html! {
                    <div class="toast" key={id}>
                        <span>{ &toast.text }</span>
                        if let Some(retry) = retry {
                            <button class="link" onclick={retry}>{ "Retry" }</button>
                        }
                        <button class="icon" title="Dismiss" aria-label="Dismiss" onclick={dismiss}>{ icons::show(Icon::Close) }</button>
                    </div>
                }
            }) }
        </div>
    }
}
