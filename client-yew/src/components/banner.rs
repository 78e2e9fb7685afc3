//! The notice that replies come from the built-in mock model: one line, dismissible, and
//! remembered as dismissed in this browser.

use yew::prelude::*;

use super::icons::{self, Icon};
use crate::storage;

/// Props of [`MockBanner`].
#[derive(Properties, PartialEq)]
pub struct MockBannerProps {
    /// The model the server would use with a key.
    pub name: String,
}

/// The banner, unless dismissed.
#[function_component(MockBanner)]
pub fn mock_banner(props: &MockBannerProps) -> Html {
    let dismissed = use_state(storage::mock_banner_dismissed);
    if *dismissed {
        return html! {};
    }
    let dismiss = Callback::from(move |_| {
        storage::dismiss_mock_banner();
        dismissed.set(true);
    });
    html! {
        <div class="banner" id="mock-banner" role="note">
            <span>
                <strong>{ "Demo mode" }</strong>
                { format!(": replies come from the built-in mock model, not {}. Set SAMBANOVA_API_KEY on the server for real answers.", props.name) }
            </span>
            <button class="icon" id="dismiss-banner" title="Dismiss" aria-label="Dismiss the demo notice" onclick={dismiss}>
                { icons::show(Icon::Close) }
            </button>
        </div>
    }
}
