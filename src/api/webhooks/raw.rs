//! The body of a webhook route: the raw bytes, for the provider's dialect to verify and
//! read exactly as received, documented (and content-type checked) as the payload `P`.

use std::marker::PhantomData;

use poem::{FromRequest, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    error::ContentTypeError,
    payload::Payload,
    registry::{MetaMediaType, MetaRequest, Registry},
};

/// The raw bytes of a body documented as `P` (`Json<…>` or `Form<…>`).
pub struct RawWebhook<P> {
    pub bytes: Vec<u8>,
    documented: PhantomData<fn() -> P>,
}

impl<'a, P: Payload> ApiExtractor<'a> for RawWebhook<P> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        P::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: P::CONTENT_TYPE,
                schema: P::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(content_type) if P::check_content_type(content_type) => Ok(Self {
                bytes: <Vec<u8> as FromRequest>::from_request(request, body).await?,
                documented: PhantomData,
            }),
            Some(content_type) => Err(ContentTypeError::NotSupported {
                content_type: content_type.to_string(),
            }
            .into()),
            None => Err(ContentTypeError::ExpectContentType.into()),
        }
    }
}
