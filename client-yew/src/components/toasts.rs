//! Toasts: errors and notices at the bottom of the screen, each dismissed after a while or
//! by hand, with a Retry button where retrying makes sense.

use relay_protocol::ClientFrame;
use yew::prelude::*;

use super::app::Ctx;
use crate::state::{Action, InFlight, Retry};

/// How long a toast stays, in milliseconds.
const SHOWN_MS: u32 = 8000;

/// The toasts on screen.
#[function_component(Toasts)]
pub fn toasts() -> Html {
    let ctx = use_context::<Ctx>().expect("inside the app");
    let newest = ctx.model.toasts.last().map(|t| t.id);
    {
        let model = ctx.model.clone();
        use_effect_with(newest, move |newest| {
            let timer = newest
                .map(|id| gloo_timers::callback::Timeout::new(SHOWN_MS, move || model.dispatch(Action::Dismiss(id))));
            move || {
                if let Some(timer) = timer {
                    timer.forget();
                }
            }
        });
    }
    html! {
        <div class="toasts" id="toasts" role="status" aria-live="polite">
            { for ctx.model.toasts.iter().map(|toast| {
                let id = toast.id;
                let dismiss = { let model = ctx.model.clone(); Callback::from(move |_| model.dispatch(Action::Dismiss(id))) };
                let retry = toast.retry.clone().map(|retry| {
                    let ctx = ctx.clone();
                    Callback::from(move |_| {
                        match &retry {
                            Retry::Send { session_id, content, key } => {
                                if let Some(socket) = &ctx.socket {
                                    let request_id = socket.request_id();
                                    ctx.model.dispatch(Action::Sending(InFlight {
                                        request_id: request_id.clone(),
                                        session_id: *session_id,
                                        content: content.clone(),
                                        key: key.clone(),
                                    }));
                                    let frame = ClientFrame::Send {
                                        id: Some(request_id),
                                        session_id: *session_id,
                                        content: content.clone(),
                                        client_message_id: Some(key.clone()),
                                    };
                                    socket.send(&frame);
                                }
                            }
                            Retry::LoadSessions => ctx.load_sessions(1),
                        }
                        ctx.model.dispatch(Action::Dismiss(id));
                    })
                });
                html! {
                    <div class="toast" key={id}>
                        <span>{ &toast.text }</span>
                        if let Some(retry) = retry {
                            <button class="link" onclick={retry}>{ "Retry" }</button>
                        }
                        <button class="icon" title="Dismiss" onclick={dismiss}>{ "×" }</button>
                    </div>
                }
            }) }
        </div>
    }
}
