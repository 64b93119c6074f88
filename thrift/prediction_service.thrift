// twml's batch prediction envelope, as in the Thrift-generated code of
// twitter/the-algorithm (navi/thrift_bpr_adapter). Field ids and types are exact.
namespace java com.twitter.ml.prediction_service
namespace py twml.idl.prediction_service

include "data.thrift"

struct BatchPredictionRequest {
  1: required list<data.DataRecord> individualFeaturesList
  2: optional data.DataRecord commonFeatures
}

struct BatchPredictionResponse {
  1: required list<data.DataRecord> predictions
}
